"""The address students type (or scan) to reach the editor from their laptops."""
import socket

import segno

ANY_ADDRESS = {"0.0.0.0", "::", ""}


def lan_address():
    """This machine's address on the local network (no packet is sent), or 127.0.0.1 without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # picks the interface a LAN packet would leave by
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def share_url(host, port):
    """The editor's URL as seen from another machine."""
    if host in ANY_ADDRESS:
        host = lan_address()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def qr_svg(url):
    """A QR code of `url` as inline SVG markup, for the dashboard."""
    return segno.make(url, error="m").svg_inline(scale=5, border=2)


def print_qr(url, out):
    """A QR code of `url` drawn with block characters in the terminal."""
    segno.make(url, error="m").terminal(out=out, compact=True, border=2)
