// The playground page: sends a request, reads its server-sent events, fills one column per branch.
// Plain JavaScript, no library and no request outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK = "\u0000"; // a [MASK] position in a diffusion frame
const FRAME_MS = 70; // animation speed of the denoising

const state = {
  models: [], model: null, mode: "think", limits: {},
  run: null, // the request in flight: {ctrl, mode, req, cols, ...}
  last: null, // the last finished or running batch: {req, start, cols} (regenerate uses it)
  frames: [], shown: -1, timer: null, result: null,
};

// ------------------------------------------------------------------ helpers

function esc(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function branchColour(e, n) {
  return `hsl(${Math.round((e * 360) / Math.max(n, 1))}, 70%, 82%)`;
}

function fmt(x, d = 3) {
  return x === null || x === undefined ? "n/a" : Number(x).toFixed(d);
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
}

function setStatus(msg) {
  $("status").textContent = msg;
}

// POST ``body`` to ``url`` and call ``on[event](data)`` for every server-sent event of the answer.
// A 4xx/5xx answer is thrown as an Error with the server's one-line message.
async function stream(url, body, on, signal) {
  const resp = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, k);
      buf = buf.slice(k + 2);
      let event = "message", data = "";
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (on[event]) on[event](JSON.parse(data));
    }
  }
}

// ------------------------------------------------------------------ set-up

async function init() {
  const r = await fetch("/api/models");
  const info = await r.json();
  state.models = info.models;
  state.limits = info.limits;
  const sel = $("model");
  for (const m of state.models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = `${m.name} (${m.kind === "ar" ? (m.thought_layers.length ? "MoT" : "dense") : m.kind})`;
    sel.appendChild(o);
  }
  $("branches").max = info.limits.max_branches;
  $("max_tokens").max = info.limits.max_tokens;
  $("length").max = info.limits.max_tokens;
  sel.addEventListener("change", () => selectModel(sel.value));
  for (const b of document.querySelectorAll("#modes button")) {
    b.addEventListener("click", () => setMode(b.dataset.mode));
  }
  $("form").addEventListener("submit", (ev) => { ev.preventDefault(); generate(); });
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("keydown", (ev) => { // Ctrl+Enter (Cmd+Enter) generates
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); if (!state.run) generate(); }
  });
  $("layer").addEventListener("change", recolourAll);
  $("frame").addEventListener("input", () => { stopAnimation(); showFrame(+$("frame").value); });
  $("play").addEventListener("click", () => animate(0));
  selectModel(state.models[0].name);
  document.body.dataset.ready = "true";
}

function selectModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const m = state.model;
  const diffusion = m.kind === "diffusion";
  for (const b of document.querySelectorAll("#modes button")) {
    b.disabled = diffusion ? b.dataset.mode === "think" : b.dataset.mode !== "think";
  }
  $("model-info").textContent = m.thought_layers.length
    ? `${m.thought_layers.length} thought layers × ${m.n_branches} branches` : "dense (no thought layers)";
  const layer = $("layer");
  layer.innerHTML = '<option value="">none</option>' +
    m.thought_layers.map((l) => `<option value="${l}">L${l}</option>`).join("");
  if (m.thought_layers.length) layer.value = String(m.thought_layers[0]);
  const legend = $("legend");
  legend.textContent = m.thought_layers.length ? "branches " : "";
  for (let e = 0; m.thought_layers.length && e < m.n_branches; e++) {
    legend.appendChild(swatch("span", "chip", branchColour(e, m.n_branches), String(e)));
  }
  setMode(diffusion ? (state.mode === "think" ? "diffuse" : state.mode) : "think");
}

function setMode(mode) {
  state.mode = mode;
  document.body.dataset.mode = mode;
  for (const b of document.querySelectorAll("#modes button")) b.classList.toggle("active", b.dataset.mode === mode);
  for (const el of document.querySelectorAll("[class*='for-']")) {
    el.style.display = el.classList.contains("for-" + mode) ? "" : "none";
  }
  $("prompt-label").textContent = mode === "renoise" ? "text to vary" : "prompt";
  // a diffusion model takes one creativity for all branches: a spread LO:HI is for think only
  const crea = $("creativity");
  if (mode !== "think" && crea.value && isNaN(Number(crea.value))) crea.value = "";
}

function request() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const base = { model: state.model.name, seed: num("seed"), temperature: num("temperature") };
  const crea = $("creativity").value.trim() || null;
  if (state.mode === "think") {
    return { ...base, prompt: $("prompt").value, branches: num("branches"), creativity: crea,
      max_tokens: num("max_tokens") };
  }
  const sampler = { sampler: $("sampler").value, steps: num("steps"),
    creativity: crea === null || isNaN(Number(crea)) ? crea : Number(crea) };
  if (state.mode === "diffuse") {
    return { ...base, ...sampler, prompt: $("prompt").value, branches: num("branches"), length: num("length"),
      keep: num("keep") };
  }
  return { ...base, ...sampler, text: $("prompt").value, variants: num("branches"), noise: num("noise") };
}

// ------------------------------------------------------------------ runs

function busy(on) {
  $("go").disabled = on;
  $("stop").disabled = !on;
  for (const b of document.querySelectorAll("button.regen")) b.disabled = on;
}

function stop() {
  if (state.run) state.run.ctrl.abort();
}

async function generate() {
  showError("");
  stopAnimation();
  const req = request();
  const mode = state.mode;
  const run = { ctrl: new AbortController(), mode, req, t0: performance.now() };
  state.run = run;
  busy(true);
  setStatus("waiting for the model…");
  $("diversity").textContent = "";
  const on = mode === "think" ? thinkHandlers(run, null) : diffusionHandlers(run);
  try {
    await stream(`/api/${mode}`, req, on, run.ctrl.signal);
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else { showError(e.message); setStatus(""); }
  } finally {
    state.run = null;
    busy(false);
    for (const col of document.querySelectorAll("#columns .column.live")) col.classList.remove("live");
  }
}

// ------------------------------------------------------------------ think

function makeColumn(i, seed, crea, prompt) {
  const col = document.createElement("article");
  col.className = "column";
  col.dataset.seed = seed;
  col.innerHTML = `
    <div class="head">
      <b>branch ${i}</b> <span class="meta">seed ${seed}${crea === null || crea === undefined ? "" :
        ` · creativity ${fmt(crea, 2)}`}</span>
      <span class="ll" title="running mean log-likelihood of the generated tokens (nats per token)"></span>
      <span class="badge"></span>
      ${state.mode === "think" ? `<button type="button" class="regen" title="regenerate this branch alone from its seed">↻</button>` : ""}
    </div>
    <div class="body"><span class="prompt">${esc(prompt)}</span><span class="gen"></span></div>
    <div class="loads"></div>`;
  return col;
}

function thinkHandlers(run, target) {
  // target: the column index a single regenerated branch goes to (null: a new batch)
  return {
    start(d) {
      run.cols = [];
      if (target === null) {
        const box = $("columns");
        box.innerHTML = "";
        box.className = "";
        d.seeds.forEach((s, i) => {
          const col = makeColumn(i, s, d.creativity ? d.creativity[i] : null, d.prompt);
          col.querySelector(".regen").addEventListener("click", () => regenerate(i));
          box.appendChild(col);
          run.cols.push(col);
        });
        state.last = { req: run.req, start: d, cols: run.cols.slice(), texts: null };
      } else {
        const col = state.last.cols[target];
        col.querySelector(".gen").innerHTML = "";
        col.querySelector(".loads").innerHTML = "";
        col.dataset.done = "false";
        col.querySelector(".badge").textContent = "";
        run.cols.push(col);
      }
      for (const col of run.cols) {
        col.classList.add("live");
        col.classList.toggle("chat", state.model.kind === "hf"); // an answer to the prompt, not its continuation
        col.dataset.done = "false";
      }
      run.tokens = run.cols.map(() => []);
      run.n = 0;
    },
    step(d) {
      d.text.forEach((t, b) => {
        const toks = run.tokens[b];
        if (d.route && toks.length) { // the route of the token this step read: the previous one
          const last = toks[toks.length - 1];
          if (!last.dataset.route) { last.dataset.route = JSON.stringify(pick(d.route, b)); colour(last); }
        }
        if (t !== "") {
          const span = document.createElement("span");
          span.className = "tok";
          span.textContent = t;
          run.cols[b].querySelector(".gen").appendChild(span);
          toks.push(span);
        }
        if (d.loglik) run.cols[b].querySelector(".ll").textContent = `ll ${fmt(d.loglik[b])}`;
        if (d.done[b]) run.cols[b].dataset.done = "stopping";
      });
      run.n = d.i + 1;
      setStatus(`generating… ${run.n} tokens, ${((performance.now() - run.t0) / 1000).toFixed(1)} s`);
    },
    result(d) {
      d.branches.forEach((br, b) => finishColumn(run.cols[b], br));
      if (target === null) {
        state.last.texts = d.branches.map((br) => br.text);
        showDiversity(d.diversity, d.branches.length);
      } else {
        const same = d.branches[0].text === state.last.texts[target];
        const badge = run.cols[0].querySelector(".badge");
        badge.textContent = same ? "✓ same text as in the batch" : "✗ differs from the batch";
        badge.className = "badge " + (same ? "ok" : "bad");
        run.cols[0].dataset.match = same ? "true" : "false";
      }
      setStatus(`done in ${((performance.now() - run.t0) / 1000).toFixed(1)} s`);
    },
    error(d) { showError(d.error); },
  };
}

function pick(route, b) {
  const out = {};
  for (const [layer, rows] of Object.entries(route)) out[layer] = rows[b];
  return out;
}

function finishColumn(col, br) {
  const gen = col.querySelector(".gen");
  if (gen.textContent !== br.text) gen.textContent = br.text; // e.g. a stop string: the result is the reference
  col.querySelector(".ll").textContent = `ll ${fmt(br.mean_loglik)}`;
  col.classList.remove("live");
  col.dataset.done = "true";
  // per-layer load of the branch: one cell per thought branch, opacity = its share; numbers on hover
  const loads = col.querySelector(".loads");
  loads.textContent = "";
  for (const [l, row] of Object.entries(br.routing || {})) {
    const line = document.createElement("div");
    line.className = "load";
    line.title = `layer ${l} load: ` + row.map((v, e) => `${e}: ${Math.round(v * 100)}%`).join(", ");
    line.appendChild(swatch("span", "ln", "", `L${l}`));
    const top = Math.max(...row, 1e-9);
    row.forEach((v, e) => {
      const cell = swatch("i", "", branchColour(e, row.length), "");
      cell.style.opacity = (0.08 + 0.92 * v / top).toFixed(2);
      line.appendChild(cell);
    });
    loads.appendChild(line);
  }
}

// An element with a class, a background colour and a text. Colours are set through the CSSOM: the
// page's Content-Security-Policy refuses inline style attributes.
function swatch(tag, cls, background, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (background) el.style.background = background;
  el.textContent = text;
  return el;
}

function colour(span) {
  const layer = $("layer").value;
  const route = span.dataset.route ? JSON.parse(span.dataset.route) : null;
  const n = state.model.n_branches;
  if (!route) { span.style.background = ""; span.title = ""; return; }
  span.title = Object.entries(route).map(([l, es]) => `L${l}: ${es.join(",")}`).join("  ");
  const es = layer === "" ? [] : route[layer] || [];
  if (!es.length) { span.style.background = ""; return; }
  const stops = es.map((e, j) => `${branchColour(e, n)} ${(j * 100) / es.length}% ${((j + 1) * 100) / es.length}%`);
  span.style.background = `linear-gradient(to bottom, ${stops.join(", ")})`;
}

function recolourAll() {
  for (const span of document.querySelectorAll("#columns .tok")) colour(span);
}

async function regenerate(i) {
  if (!state.last || state.run) return;
  showError("");
  const s = state.last.start;
  const req = { ...state.last.req, branch_seeds: [s.seeds[i]], branches: 1,
    creativity: s.creativity ? s.creativity[i] : state.last.req.creativity };
  const run = { ctrl: new AbortController(), mode: "think", req, t0: performance.now() };
  state.run = run;
  busy(true);
  try {
    await stream("/api/think", req, thinkHandlers(run, i), run.ctrl.signal);
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  } finally {
    state.run = null;
    busy(false);
    for (const col of document.querySelectorAll("#columns .column.live")) col.classList.remove("live");
  }
}

function showDiversity(d, n) {
  if (!d || n < 2) { $("diversity").textContent = ""; return; }
  $("diversity").innerHTML = `<b>diversity of the set</b>
    <span title="distinct bigrams / all bigrams over the branches (Li et al. 2016); higher = more diverse">distinct-2 <b>${fmt(d.distinct_2)}</b></span>
    <span title="distinct trigrams / all trigrams">distinct-3 <b>${fmt(d.distinct_3)}</b></span>
    <span title="mean BLEU of each branch against the others (Zhu et al. 2018); lower = more diverse">self-BLEU <b>${fmt(d.self_bleu, 1)}</b></span>` +
    (d.semantic_distance === undefined ? "" : `
    <span title="mean pairwise cosine distance of the sentence embeddings (all-MiniLM-L6-v2)">semantic distance <b>${fmt(d.semantic_distance)}</b></span>
    <span title="Vendi score of the embeddings: the effective number of distinct meanings (Friedman &amp; Dieng 2023)">Vendi <b>${fmt(d.vendi_semantic, 2)}</b></span>`);
}

// ------------------------------------------------------------------ diffusion: diffuse and renoise

function diffusionHandlers(run) {
  return {
    start(d) {
      const box = $("columns");
      box.innerHTML = "";
      box.className = "diffusion";
      state.frames = [];
      state.shown = -1;
      state.result = null;
      run.cols = d.seeds.map((s, i) => {
        const col = makeColumn(i, s, d.creativity, "");
        col.querySelector(".head b").textContent = run.mode === "renoise" ? `variant ${i}` : `branch ${i}`;
        box.appendChild(col);
        col.dataset.done = "false";
        return col;
      });
      state.cols = run.cols;
      state.prompt = d.prompt;
      const orig = $("original");
      orig.hidden = run.mode !== "renoise";
      orig.innerHTML = run.mode === "renoise" ? `<b>original</b> <span class="body">${esc(d.prompt)}</span>` : "";
      setStatus("denoising…");
    },
    frame(d) {
      state.frames.push(d);
      $("frame").max = state.frames.length - 1;
      if (!state.timer) animate(state.shown + 1);
    },
    result(d) {
      state.result = { mode: run.mode, data: d };
      setStatus(`done in ${((performance.now() - run.t0) / 1000).toFixed(1)} s`);
      if (!state.timer) showFinal();
    },
    error(d) { showError(d.error); },
  };
}

function stopAnimation() {
  clearInterval(state.timer);
  state.timer = null;
}

function animate(from) {
  stopAnimation();
  if (!state.frames.length) return;
  let i = Math.min(from, state.frames.length - 1);
  showFrame(i);
  state.timer = setInterval(() => {
    if (i + 1 < state.frames.length) showFrame(++i);
    else { stopAnimation(); if (state.result) showFinal(); }
  }, FRAME_MS);
}

// Draw frame i: masked positions as dots, the characters this step revealed highlighted, those of the
// last few steps fading out (rough), the older ones plain (settled).
function showFrame(i) {
  const f = state.frames[i];
  if (!f) return;
  state.shown = i;
  $("frame").value = i;
  $("frame-label").textContent = `step ${f.step} / ${f.steps}`;
  const back = (j, b) => (i - j >= 0 ? state.frames[i - j].rows[b] : null);
  f.rows.forEach((row, b) => {
    const ago = [back(1, b), back(2, b), back(3, b)];
    let html = "";
    for (let k = 0; k < row.length; k++) {
      const c = row[k];
      if (c === MASK) html += '<span class="mask">·</span>';
      else if (ago[0] && ago[0][k] === MASK) html += `<span class="fresh">${esc(c)}</span>`;
      else if ((ago[1] && ago[1][k] === MASK) || (ago[2] && ago[2][k] === MASK)) html += `<span class="recent">${esc(c)}</span>`;
      else html += esc(c);
    }
    const col = state.cols[b];
    if (col) {
      col.querySelector(".gen").innerHTML = html;
      col.querySelector(".badge").textContent = f.step === f.steps ? "" : "denoising";
    }
  });
}

function showFinal() {
  const r = state.result;
  if (!r) return;
  showDiversity(r.data.diversity, (r.data.branches || r.data.variants).length);
  if (r.mode === "diffuse") {
    // ranked best first (ELBO), as `mot diffuse` prints them: the final text of each branch
    r.data.branches.forEach((br, rank) => {
      const col = state.cols[rank];
      col.querySelector(".head b").textContent = `rank ${rank}`;
      col.querySelector(".meta").textContent = `seed ${br.seed}` + (br.parent_seed === null ? "" : ` (from ${br.parent_seed})`);
      col.querySelector(".ll").textContent = `score ${fmt(br.score)}`;
      col.querySelector(".ll").title = "negative ELBO bits per character (higher is better)";
      col.querySelector(".prompt").textContent = r.data.prompt;
      col.querySelector(".gen").textContent = br.text;
      col.querySelector(".badge").textContent = "";
      col.dataset.done = "true";
    });
  } else {
    const orig = r.data.text;
    r.data.variants.forEach((v, b) => {
      const col = state.cols[b];
      let html = "";
      for (let k = 0; k < v.text.length; k++) {
        html += v.text[k] !== orig[k] ? `<span class="changed">${esc(v.text[k])}</span>` : esc(v.text[k]);
      }
      col.querySelector(".gen").innerHTML = html;
      col.querySelector(".ll").textContent = `masked ${v.masked}, changed ${v.changed}`;
      col.querySelector(".badge").textContent = "";
      col.dataset.done = "true";
    });
  }
}

window.addEventListener("DOMContentLoaded", () => {
  init().catch((e) => showError("could not load the models: " + e.message));
});
