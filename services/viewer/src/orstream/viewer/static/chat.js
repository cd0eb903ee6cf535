// Chat beside the video, on the `annotations` DataChannel. The edge stamps who wrote each
// message and does not echo a message to its sender, so our own lines are shown as sent.
const MAX_LINES = 200;

function time(tsNs) {
  const date = tsNs ? new Date(Number(BigInt(tsNs) / 1000000n)) : new Date();
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export class Chat {
  /**
   * @param log   the <ol> messages go into
   * @param form  the <form> with a text <input>
   * @param send  (message object) → bool
   */
  constructor(log, form, send) {
    this.log = log;
    this.form = form;
    this.send = send;
    this.input = form.querySelector("input");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.input.value.trim();
      if (!text) return;
      if (this.send({ type: "chat", text })) {
        this.append({ subject: "you", text });
        this.input.value = "";
      } else {
        this.note("Not sent: the room's channel is not open (reconnecting?)");
      }
    });
  }

  line() {
    const li = document.createElement("li");
    this.log.append(li);
    while (this.log.children.length > MAX_LINES) this.log.firstElementChild.remove();
    return li;
  }

  /** A chat message ({subject, role, text, ts_ns}). */
  append(message) {
    const li = this.line();
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.subject + (message.role ? ` (${message.role})` : "");
    const when = document.createElement("time");
    when.className = "muted";
    when.textContent = ` ${time(message.ts_ns)} `;
    li.append(who, document.createTextNode(message.text), when);
    this.log.scrollTop = this.log.scrollHeight;  // the log only, not the page around it
  }

  /** A note from the edge or the app (a refused message, say). */
  note(text) {
    const li = this.line();
    li.className = "error";
    li.textContent = text;
  }
}
