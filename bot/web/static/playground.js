// The playground: posts forms to /api/*, and redraws the timeline from /api/events (SSE).
//
// The server's timeline (messages, job cards with images) is the truth; this browser adds
// only its own notices (replies that are not stored, refusals), the message being sent
// and a "thinking" bubble while the agent answers.
"use strict";
const $ = (id) => document.getElementById(id);
const feed = $("feed");
const statusLine = $("status");
const READY_TEXT = statusLine.textContent;
const DELETED_KEY = "dreambot.deleted";  // jobs whose results this browser deleted
const deleted = new Set(JSON.parse(localStorage.getItem(DELETED_KEY) || "[]"));
const TIPS = {V: "Variations of image", U: "Upscale image", "🚩": "Report to the admins: image"};
const nodes = new Map();  // key -> {sig, node}: unchanged items keep their element
let items = [];  // the server's timeline, oldest first
let local = [];  // {key, role, text, after (server items then), beforeJob?, pending?}
let thinking = 0;  // chat requests in flight
let seq = 0;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

const userCount = () => items.filter((i) => i.type === "message" && i.role === "user").length;

function note(text, {role = "notice", beforeJob = null, pending = null} = {}) {
  const item = {key: `l${seq++}`, type: "message", role, text, after: items.length, beforeJob, pending};
  local.push(item);
  draw();
  return item;
}

// Server items in order, each local notice where it happened (before the job card it
// announces, else after what the page showed then), the typing bubble last.
function ordered() {
  const jobs = new Set(items.filter((i) => i.type === "job").map((i) => i.id));
  const shown = local.filter((n) => n.pending === null || userCount() <= n.pending);
  const out = [];
  const place = (pred) => shown.filter(pred).forEach((n) => out.push(n));
  items.forEach((item, index) => {
    place((n) => !jobs.has(n.beforeJob) && n.after === index);
    if (item.type === "job") place((n) => n.beforeJob === item.id);
    if (!(item.type === "job" && deleted.has(item.id))) out.push(item);
  });
  place((n) => !jobs.has(n.beforeJob) && n.after >= items.length);
  if (thinking) out.push({key: "typing", type: "typing"});
  return out;
}

function keyOf(item) {
  return item.key || (item.type === "job" ? `j${item.id}` : `m${item.id}`);
}

function draw() {
  const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  const before = feed.childElementCount;
  const seen = new Set();
  const children = ordered().map((item) => {
    const key = keyOf(item), sig = JSON.stringify(item);
    seen.add(key);
    const cached = nodes.get(key);
    if (cached && cached.sig === sig) return cached.node;  // images stay loaded, no flicker
    const node = render(item);
    nodes.set(key, {sig, node});
    return node;
  });
  for (const key of nodes.keys()) if (!seen.has(key)) nodes.delete(key);
  feed.replaceChildren(...children);
  $("empty").hidden = children.length > 0;
  if (atBottom || children.length > before) window.scrollTo(0, document.body.scrollHeight);
}

function render(item) {
  if (item.type === "typing") {
    const bubble = el("div", {class: "msg assistant typing", "aria-label": "dreambot is thinking"});
    for (let i = 0; i < 3; i++) bubble.append(el("span"));
    return bubble;
  }
  if (item.type === "message") return el("div", {class: `msg ${item.role}`}, item.text);
  const card = el("article", {class: `job ${item.status}`, "data-job": item.id, "data-status": item.status});
  card.append(el("div", {class: "card-text"}, item.text));
  if (item.status === "running") {
    const known = item.percent !== null && item.percent !== undefined;
    const bar = el("div", {class: known ? "bar" : "bar unknown", role: "progressbar"}), fill = el("div");
    if (known) {
      bar.setAttribute("aria-valuenow", item.percent);
      fill.style.width = `${item.percent}%`;
    }
    bar.append(fill);
    card.append(bar);
  }
  if (item.preview) card.append(el("img", {class: "preview", src: item.preview, alt: "preview"}));
  if (item.images.length) {
    const grid = el("div", {class: "images"});
    item.images.forEach((src, i) => {
      const link = el("a", {href: src, target: "_blank", title: `open image ${i + 1}`});
      link.append(el("img", {src, alt: `image ${i + 1}`}));
      grid.append(link);
    });
    card.append(grid);
  }
  if (item.buttons.length) {
    const row = el("div", {class: "buttons"});
    for (const b of item.buttons) {
      const [, kind, n] = b.label.match(/^(V|U|🚩)(\d+)$/u) || [];
      const attrs = {type: "button", class: b.style, "data-id": b.custom_id};
      if (kind) attrs.title = `${TIPS[kind]} ${n}`;
      const btn = el("button", attrs, b.label);
      btn.addEventListener("click", () => press(btn, b.custom_id));
      row.append(btn);
    }
    card.append(row);
  }
  return card;
}

const MAX_UPLOAD_MB = Number(document.body.dataset.maxUploadMb);
const TOO_LARGE = `These photos are too large together; please send at most ${MAX_UPLOAD_MB} MB at once.`;

function uploadBytes(data) {
  let total = 0;
  for (const value of data.values()) if (value instanceof File) total += value.size;
  return total;
}

// POST a form; the JSON reply, or null after telling the person what went wrong (`tell`:
// where to say it; the timeline by default).
async function send(url, data, tell = (text) => note(text, {role: "error"})) {
  if (uploadBytes(data) > MAX_UPLOAD_MB * 1024 * 1024) {  // the server would refuse it unread
    tell(TOO_LARGE);
    return null;
  }
  data.append("event_id", crypto.randomUUID());
  let res;
  try {
    res = await fetch(url, {method: "POST", body: data});
  } catch (err) {
    tell("Could not reach dreambot; is it still running?");
    return null;
  }
  const reply = await res.json().catch(() => ({}));
  if (!res.ok) {
    // A body over the server's limit is cut off before any of our code runs: say it here.
    const fallback = res.status === 413 ? TOO_LARGE : "Something went wrong; please try again.";
    tell(typeof reply.detail === "string" ? reply.detail : fallback);
    return null;
  }
  return reply;
}

function answer(reply) {  // show a reply the server does not keep in the timeline
  if (reply && reply.text && !reply.duplicate && !reply.recorded) {
    note(reply.text, {beforeJob: reply.job_ids.length ? reply.job_ids[0] : null});
  }
}

async function press(button, customId) {
  button.disabled = true;
  const reply = await send("/api/press", new URLSearchParams({custom_id: customId}));
  button.disabled = false;
  if (reply && reply.delete_job_id) {
    deleted.add(reply.delete_job_id);
    localStorage.setItem(DELETED_KEY, JSON.stringify([...deleted]));
  }
  answer(reply);
  draw();
}

$("chat-files").addEventListener("change", (ev) => {
  const n = ev.target.files.length;
  $("chat-count").textContent = n ? String(n) : "";
});

$("chat").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const text = $("chat-text").value.trim();
  const files = $("chat-files").files.length;
  if (!text && !files) return;
  ev.target.reset();
  $("chat-count").textContent = "";
  const shownText = files ? `${text}${text ? " " : ""}📎 ${files} photo${files > 1 ? "s" : ""}` : text;
  const mine = note(shownText, {role: "user", pending: userCount()});
  thinking += 1;
  draw();
  const reply = await send("/api/chat", form);
  thinking -= 1;
  if (reply && reply.recorded) local = local.filter((n) => n !== mine);  // the timeline has it
  else mine.pending = null;  // not stored: keep showing what was sent
  answer(reply);
  draw();
});

// The photo coach: each chosen photo gets a badge (ok / warn / drop) from /api/photos/check
// before Train is pressed; with warnings the button reads "Train anyway" and says so.
const BADGES = {ok: "✓", warn: "!", drop: "✕"};
let photoCheck = null;  // the last check of the chosen photos (null: none yet, or outdated)
let checking = 0;

function showCheck(check) {
  photoCheck = check;
  const figures = [...$("train-thumbs").children];
  figures.forEach((fig) => fig.querySelector(".badge")?.remove());
  for (const photo of check ? check.photos : []) {
    const fig = figures[photo.index];
    if (!fig) continue;
    fig.dataset.verdict = photo.verdict;
    fig.title = photo.reason;
    fig.append(el("span", {class: `badge ${photo.verdict}`, "aria-label": photo.reason}, BADGES[photo.verdict]));
  }
  $("train-check").textContent = check ? check.summary : "";
  $("train-check").className = check && check.needs_confirmation ? "check-summary warn" : "check-summary";
  $("train-submit").textContent = check && check.needs_confirmation ? "Train anyway" : "Train";
}

let checkedClass = null;  // the class noun the shown check was made for (faces: people only)

async function checkPhotos() {
  const files = $("train-files").files;
  if (!files.length) return showCheck(null);
  const mine = ++checking;
  const data = new FormData();
  checkedClass = $("train-class").value;
  data.append("class_noun", checkedClass);
  for (const f of files) data.append("files", f);
  // Within the same limits as Train: a refusal (too large, not a photo) shows in place of the summary.
  const say = (text) => { if (mine === checking) $("train-check").textContent = text; };
  const reply = await send("/api/photos/check", data, say);
  if (mine !== checking || !reply) return;  // the photos changed meanwhile, or it was refused
  if (reply.error) say(reply.error);
  else showCheck(reply);
}

$("train-files").addEventListener("change", (ev) => {
  const thumbs = $("train-thumbs");
  thumbs.querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
  showCheck(null);
  thumbs.replaceChildren(...[...ev.target.files].map((f) => {
    const fig = el("figure", {class: "thumb"});
    fig.append(el("img", {src: URL.createObjectURL(f), alt: f.name}));
    return fig;
  }));
  checkPhotos();
});
$("train-class").addEventListener("change", () => {
  if ($("train-files").files.length && $("train-class").value !== checkedClass) checkPhotos();
});

$("train").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, button = form.querySelector("button[type=submit]");
  button.disabled = true;
  button.textContent = "Uploading…";
  const data = new FormData(form);
  if (photoCheck && photoCheck.needs_confirmation) data.append("confirmed", "true");  // seen: train anyway
  const reply = await send("/api/train", data);
  button.disabled = false;
  showCheck(reply && reply.photo_check ? reply.photo_check : photoCheck);  // the server asked: show why
  const consent = $("train-consent").closest("label");
  consent.classList.toggle("attention", Boolean(reply && reply.needs_consent));
  if (reply && reply.job_ids.length) {  // started: clear the form for the next subject
    form.reset();
    $("train-thumbs").replaceChildren();
    showCheck(null);
    $("train-box").open = false;
  }
  if (!(reply && reply.photo_check)) answer(reply);  // the question is shown by the badges
});

const events = new EventSource("/api/events");
let pictures = "";  // the server's word on the picture workers: ready, warming up, none
const showStatus = () => {
  statusLine.textContent = pictures ? `${READY_TEXT} (${pictures})` : READY_TEXT;
};
events.onmessage = (ev) => {
  const data = JSON.parse(ev.data);
  items = data.items;
  pictures = data.pictures || "";
  if (!statusLine.classList.contains("offline")) showStatus();
  draw();
};
events.onopen = () => {
  statusLine.classList.remove("offline");
  showStatus();
};
events.onerror = () => {
  statusLine.textContent = "Lost contact with dreambot — reconnecting…";
  statusLine.classList.add("offline");
};
draw();
