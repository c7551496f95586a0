// The playground: posts forms to /api/*, and redraws the timeline from /api/events (SSE).
"use strict";
const feed = document.getElementById("feed");
const local = [];  // replies to this browser's own actions (not stored server-side)
let items = [];

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function draw() {
  const all = items.concat(local).sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  feed.replaceChildren(...all.map(render));
  feed.lastElementChild?.scrollIntoView({block: "end"});
}

function render(item) {
  if (item.type === "message") return el("div", {class: `msg ${item.role}`}, item.text);
  const card = el("div", {class: `job ${item.status}`, "data-job": item.id, "data-status": item.status});
  card.append(el("div", {class: "card-text"}, item.text));
  if (item.percent !== null && item.percent !== undefined) {
    const bar = el("div", {class: "bar"}), fill = el("div");
    fill.style.width = `${item.percent}%`;
    bar.append(fill);
    card.append(bar);
  }
  if (item.preview) card.append(el("img", {class: "preview", src: item.preview, alt: "preview"}));
  if (item.images.length) {
    const grid = el("div", {class: "images"});
    item.images.forEach((src, i) => grid.append(el("img", {src, alt: `image ${i + 1}`})));
    card.append(grid);
  }
  if (item.buttons.length) {
    const row = el("div", {class: "buttons"});
    for (const b of item.buttons) {
      const btn = el("button", {type: "button", "data-id": b.custom_id}, b.label);
      btn.addEventListener("click", () => send("/api/press", new URLSearchParams({custom_id: b.custom_id})));
      row.append(btn);
    }
    card.append(row);
  }
  return card;
}

function note(text, kind = "notice") {
  local.push({type: "message", role: kind, text, at: new Date().toISOString().replace("Z", "")});
  draw();
}

async function send(url, body) {
  const data = body instanceof URLSearchParams ? body : body;
  data.append("event_id", crypto.randomUUID());
  try {
    const res = await fetch(url, {method: "POST", body: data});
    const reply = await res.json();
    if (!res.ok) return note(reply.detail || "Something went wrong.", "error");
    if (reply.text && !reply.duplicate && !reply.recorded) note(reply.text);
  } catch (err) {
    note("Could not reach dreambot; is it still running?", "error");
  }
}

document.getElementById("chat").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const text = document.getElementById("chat-text").value.trim();
  if (!text && !document.getElementById("chat-files").files.length) return;
  ev.target.reset();
  await send("/api/chat", form);
});

document.getElementById("train").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  ev.target.reset();
  await send("/api/train", form);
});

const events = new EventSource("/api/events");
events.onmessage = (ev) => { items = JSON.parse(ev.data).items; draw(); };
