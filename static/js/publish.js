// Publishing: the document is stored on the server and shown at a read-only link to share.
export class Publisher {
  constructor(elements, { text, settings, onMessage }) {
    this.result = elements.result;
    this.text = text;
    this.settings = settings;
    this.onMessage = onMessage;
    elements.button.addEventListener("click", () => this.publish());
  }

  async publish() {
    let response;
    try {
      response = await fetch("/api/publish", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: this.text(), settings: this.settings() }),
      });
    } catch (error) {
      this.onMessage(`Not published: cannot reach the server (${error.message})`);
      return;
    }
    const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!response.ok) {
      this.onMessage(`Not published: ${answer.error}`);
      return;
    }
    const link = this.result.querySelector("a");
    link.href = answer.url;
    link.textContent = new URL(answer.url, window.location.href).href;
    this.result.hidden = false;
    this.onMessage("Published: anyone in the class can read it at the link.");
  }
}
