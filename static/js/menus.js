// Menu buttons (the WAI-ARIA menu button pattern): a button opens a role=menu of items; ↑ ↓ Home End
// move between them, Esc closes and gives the focus back to the button, Tab closes and moves on.

const open = new Set(); // the menus open now (at most one: opening one closes the others)

export class Menu {
  // `root` holds a .menu-button, a .menu-body and inside it a [role=menu] of [role=menuitem]s.
  constructor(root) {
    this.button = root.querySelector(".menu-button");
    this.body = root.querySelector(".menu-body");
    this.items = [...root.querySelectorAll("[role=menuitem]")];
    this.button.addEventListener("click", () => (this.isOpen ? this.close() : this.open(0)));
    this.button.addEventListener("keydown", (event) => {
      const first = { ArrowDown: 0, ArrowUp: this.items.length - 1 }[event.key];
      if (first === undefined) return;
      event.preventDefault();
      this.open(first);
    });
    this.body.addEventListener("keydown", (event) => this.onKey(event));
    this.body.addEventListener("focusout", (event) => {
      if (this.isOpen && !root.contains(event.relatedTarget)) this.close(false); // Tab, or a click elsewhere
    });
    document.addEventListener("pointerdown", (event) => {
      if (this.isOpen && !root.contains(event.target)) this.close(false);
    });
  }

  get isOpen() {
    return !this.body.hidden;
  }

  open(index) {
    for (const other of open) if (other !== this) other.close(false);
    open.add(this);
    this.body.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.focus(index);
  }

  // Close; with `returnFocus` (Esc, or an item chosen) the focus goes back to the menu's button.
  close(returnFocus = true) {
    open.delete(this);
    this.body.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    if (returnFocus) this.button.focus();
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
      Escape: () => this.close(),
    };
    if (!moves[event.key]) return;
    event.preventDefault();
    event.stopPropagation(); // Esc here closes the menu, not the view behind it
    moves[event.key]();
  }
}
