// nomic-memory search page: plain JS, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, image: null, imageB64: null, query: null, hits: [], current: null, urls: [] };

// A token can come in the URL fragment (#token=...), so it never reaches server logs.
(function initToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    state.token = decodeURIComponent(m[1]);
    sessionStorage.setItem("nomic-memory-token", state.token);
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    state.token = sessionStorage.getItem("nomic-memory-token");
  }
})();

async function api(path, opts = {}, retried = false) {
  const headers = Object.assign({}, opts.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  if (res.status === 401 && !retried) {
    const t = prompt("This server needs an access token:");
    if (t) {
      state.token = t.trim();
      sessionStorage.setItem("nomic-memory-token", state.token);
      return api(path, opts, true);
    }
  }
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return res;
}

async function blobURL(path, opts) {
  const res = await api(path, opts);
  const url = URL.createObjectURL(await res.blob());
  state.urls.push(url);
  return url;
}

function releaseURLs() {
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  state.urls = [];
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

// ---- the image query: chosen or dropped
function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { setStatus(file.name + " is not an image", true); return; }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = file;
    state.imageB64 = String(reader.result).split(",")[1];
    $("image-preview").src = reader.result;
    $("image-name").textContent = file.name;
    $("image-chip").hidden = false;
    $("q").placeholder = "Searching by the image (text optional)";
  };
  reader.readAsDataURL(file);
}

function clearImage() {
  state.image = null;
  state.imageB64 = null;
  $("image-chip").hidden = true;
  $("file").value = "";
  $("q").placeholder = "Search pages by text, or drop an image here";
}

$("file").addEventListener("change", (e) => setImage(e.target.files[0]));
$("clear-image").addEventListener("click", clearImage);
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]); });

// ---- search
function clearResults() {
  releaseURLs();
  state.hits = [];
  $("results").textContent = "";
}

function describe(query, n, ms) {
  let what = query.text ? "“" + query.text + "”" : "the image " + query.label;
  let s = n + " result" + (n === 1 ? "" : "s") + " for " + what + " in " + ms.toFixed(0) + " ms";
  if (query.ignoredText) s += " (the typed text “" + query.ignoredText + "” was not searched: remove the image to search by text)";
  return s;
}

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("q").value.trim();
  if (!text && !state.imageB64) { setStatus("Type a query or choose an image.", true); return; }
  const body = { k: parseInt($("k").value, 10) || 10 };
  const where = $("where").value.trim();
  if (where) body.where = where;
  // One query per search: the image if there is one (the status says the text was not used), else the text.
  if (state.imageB64) {
    body.images = [state.imageB64];
    state.query = { image: state.imageB64, label: state.image.name, ignoredText: text || null };
  } else {
    body.queries = [text];
    state.query = { text: text, label: text };
  }
  $("go").disabled = true;
  setStatus("Searching…");
  try {
    const res = await api("/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await res.json();
    render(data.results[0]);
    setStatus(describe(state.query, state.hits.length, data.took_ms));
  } catch (err) {
    clearResults();  // never an error above the previous query's results
    setStatus(err.message, true);
  } finally {
    $("go").disabled = false;
  }
});

// A path shown whole where it may wrap: break opportunities after separators, never mid-word.
function breakable(el, text) {
  el.textContent = "";
  text.split(/(?<=[\/_\-. ])/).forEach((part, i) => {
    if (i) el.appendChild(document.createElement("wbr"));
    el.appendChild(document.createTextNode(part));
  });
}

function pathLabel(h) {
  const path = document.createElement("div");
  path.className = "path";
  path.title = h.root + "/" + h.path;
  const cut = h.path.lastIndexOf("/");
  if (cut >= 0) {
    const dir = document.createElement("span");
    dir.className = "dir";
    dir.textContent = h.path.slice(0, cut + 1);
    path.appendChild(dir);
  }
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = h.path.slice(cut + 1);
  path.appendChild(name);
  return path;
}

function render(hits) {
  clearResults();
  state.hits = hits;
  const grid = $("results");
  hits.forEach((h) => {
    const card = document.createElement("div");
    card.className = "card";
    card.tabIndex = 0;
    card.dataset.id = h.id;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.alt = h.path;
    thumb.appendChild(img);
    const info = document.createElement("div");
    info.className = "info";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = '<span class="rank"></span><span class="page"></span><span class="score"></span>';
    meta.querySelector(".rank").textContent = "#" + h.rank;
    meta.querySelector(".page").textContent = h.page ? "page " + h.page : "";
    meta.querySelector(".score").textContent = h.score.toFixed(3);
    info.append(pathLabel(h), meta);
    card.append(thumb, info);
    card.addEventListener("click", () => openViewer(h));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") openViewer(h); });
    grid.appendChild(card);
    blobURL("/thumb/" + h.id).then((u) => { img.src = u; }).catch((err) => { thumb.textContent = err.message; thumb.classList.add("error"); });
  });
}

// ---- the viewer: the page large, with the heatmap of why it matched
async function openViewer(h) {
  state.current = h;
  breakable($("viewer-title"), h.path);
  $("viewer-meta").textContent = "rank " + h.rank + " · score " + h.score.toFixed(4) + (h.page ? " · page " + h.page : "") + " · " + h.root;
  $("viewer").hidden = false;
  const sel = $("token-select");
  sel.length = 1;
  sel.value = "";
  if (state.query.text) {
    try {
      const data = await (await api("/tokens?q=" + encodeURIComponent(state.query.text))).json();
      data.tokens.forEach((t, i) => {
        if (data.special && data.special[i]) return;  // the query prompt's padding (<|endoftext|>): not words
        const o = document.createElement("option");
        o.value = String(i);
        o.textContent = i + ": " + (t.trim() ? t.replace(/ /g, "\u2423") : JSON.stringify(t));
        sel.appendChild(o);
      });
    } catch (e) { /* the max map still works */ }
  }
  sel.disabled = sel.length <= 1;
  showHeatmap();
}

async function showHeatmap() {
  const h = state.current;
  if (!h) return;
  const img = $("heatmap");
  const note = $("viewer-note");
  const mode = $("mode-select").value;
  const tok = $("token-select").value;
  note.textContent = "";
  img.removeAttribute("src");
  try {
    let url;
    if (mode === "page") {
      url = await blobURL("/thumb/" + h.id);
    } else if (state.query.text) {
      let p = "/heatmap/" + h.id + "?mode=" + mode + "&q=" + encodeURIComponent(state.query.text);
      if (tok !== "") p += "&query_token=" + tok;
      url = await blobURL(p);
    } else {
      const body = { image: state.query.image, mode: mode };
      if (tok !== "") body.query_token = parseInt(tok, 10);
      url = await blobURL("/heatmap/" + h.id, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    }
    img.src = url;
    $("legend").hidden = mode === "page";
    if (mode !== "page") note.textContent = "Brighter patches matched the query more closely (dot products with the page's stored patch vectors).";
  } catch (err) {
    note.textContent = err.message;
    $("legend").hidden = true;
    if (err.status === 409) img.src = await blobURL("/thumb/" + h.id).catch(() => "");
  }
}

$("token-select").addEventListener("change", showHeatmap);
$("mode-select").addEventListener("change", showHeatmap);
$("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; state.current = null; });
$("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer-close").click(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("viewer").hidden) $("viewer-close").click(); });

// ---- what is being searched
api("/stats").then((r) => r.json()).then((s) => {
  $("table-info").textContent = s.table + " · " + s.kind + " · " + s.rows + " pages · " + s.model_id.split("/").pop();
}).catch((err) => setStatus(err.message, true));
