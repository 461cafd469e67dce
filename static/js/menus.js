// Buttons that open a panel: the collapsed top bar (a disclosure) and the Examples and File menus
// (the WAI-ARIA menu button pattern). Esc closes and gives the focus back to the button; so does
// choosing; a tap elsewhere, or the focus moving elsewhere (Tab), closes and moves on.

const opened = new Set(); // the open popovers: opening one closes the others it is not inside

export class Popover {
  // `button` toggles `body`; `show(open)` shows or hides it (by default the body's hidden attribute).
  constructor(button, body, show = (open) => { body.hidden = !open; }) {
    this.button = button;
    this.body = body;
    this.show = show;
    this.isOpen = false;
    button.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    body.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || !this.isOpen) return;
      event.preventDefault();
      event.stopPropagation(); // Esc closes this, not the view behind it
      this.close();
    });
    body.addEventListener("focusout", (event) => {
      if (this.isOpen && !this.holds(event.relatedTarget)) this.close(false);
    });
    document.addEventListener("pointerdown", (event) => {
      if (this.isOpen && !this.holds(event.target)) this.close(false);
    });
  }

  holds(element) {
    return Boolean(element) && (this.button.contains(element) || this.body.contains(element));
  }

  open() {
    for (const other of opened) if (!other.holds(this.button)) other.close(false);
    opened.add(this);
    this.isOpen = true;
    this.show(true);
    this.button.setAttribute("aria-expanded", "true");
  }

  // Close; with `returnFocus` (Esc, or an item chosen) the focus goes back to the button.
  close(returnFocus = true) {
    opened.delete(this);
    this.isOpen = false;
    this.show(false);
    this.button.setAttribute("aria-expanded", "false");
    if (returnFocus) this.button.focus();
  }
}

// `root` holds a .menu-button, a .menu-body and inside it a [role=menu] of [role=menuitem]s:
// ↑ ↓ Home End move between the items, ↓ or ↑ on the button opens on the first or last.
export class Menu extends Popover {
  constructor(root) {
    super(root.querySelector(".menu-button"), root.querySelector(".menu-body"));
    this.items = [...root.querySelectorAll("[role=menuitem]")];
    this.button.addEventListener("keydown", (event) => {
      const first = { ArrowDown: 0, ArrowUp: this.items.length - 1 }[event.key];
      if (first === undefined) return;
      event.preventDefault();
      this.open(first);
    });
    this.body.addEventListener("keydown", (event) => this.onKey(event));
  }

  open(index = 0) {
    super.open();
    this.focus(index);
  }

  focus(index) {
    const count = this.items.length;
    this.items[((index % count) + count) % count].focus();
  }

  onKey(event) {
    const at = this.items.indexOf(document.activeElement);
    const moves = {
      ArrowDown: () => this.focus(at + 1),
      ArrowUp: () => this.focus(at - 1),
      Home: () => this.focus(0),
      End: () => this.focus(this.items.length - 1),
    };
    if (!moves[event.key]) return;
    event.preventDefault();
    moves[event.key]();
  }
}
