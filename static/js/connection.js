// The Socket.IO connection: sends requests with fresh ids and routes server events.
export class Connection {
  constructor(handlers) {
    this.counter = 0;
    this.prefix = Math.random().toString(36).slice(2, 8);
    // window.io comes from the npm socket.io-client, served by Flask from node_modules
    this.socket = window.io({ transports: ["websocket", "polling"] });
    for (const [event, handler] of Object.entries(handlers)) {
      this.socket.on(event, handler);
    }
  }

  nextId() {
    this.counter += 1;
    return `${this.prefix}-${this.counter}`;
  }

  send(event, payload) {
    this.socket.emit(event, payload);
  }
}
