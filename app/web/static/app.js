// The operator page: plain JS over the public /v1 API, no framework and no build step.
// Every value from the server goes into the page through textContent, never innerHTML.
"use strict";

const KEY_STORE = "nominal.apiKey";          // sessionStorage: forgotten when the tab closes
const SETTING_STORE = "nominal.setting";     // localStorage: the station usually stays on one setting
const THUMBNAIL_PX = 160;

const $ = (selector, root = document) => root.querySelector(selector);
const state = { setting: null, scoring: null, calibrationId: null, lastFinishedAt: null, jobsTimer: null, objectUrls: [],
  review: { item: null, busy: false, url: null } };

// ---------- talking to the API ----------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// The API answers errors as {"detail": [{"loc", "msg", "type"}]} (or a plain string detail).
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
    if (typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON: fall through to the status line */ }
  return `${response.status} ${response.statusText}`;
}

async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;  // the browser sets the multipart boundary itself
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (_) {
    throw new ApiError(0, "The Nominal server does not answer: check that it is running and the network.");
  }
  if (response.status === 401 || response.status === 403) {
    const message = await errorMessage(response);
    askForKey(response.status, message);
    throw new ApiError(response.status, message);
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

// Images behind an API key cannot be plain <img src>: fetch them with the header, show a blob URL.
async function showImage(img, url) {
  try {
    const blob = await (await api(url)).blob();
    img.src = keepUrl(URL.createObjectURL(blob));
  } catch (error) {
    img.alt = `${img.alt} (not available: ${error.message})`;
    img.classList.add("missing");
  }
}

function keepUrl(url) {
  state.objectUrls.push(url);
  return url;
}

function releaseUrls() {
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
}

// ---------- API key and notices ----------

function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = false;
}

function hideNotice() {
  $("#notice").hidden = true;
}

function openKeyForm(open) {
  $("#key-form").hidden = !open;
  $("#key-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("#api-key").focus();
}

function askForKey(status, message) {
  if (status === 401) {
    showNotice(`This server needs an API key (${message}). Enter your key below and press “Use this key”.`);
  } else {
    showNotice(`Your API key is not allowed to do this (${message}). Enter an admin key below to change settings, images or calibrations.`);
  }
  openKeyForm(true);
}

function setupKeyForm() {
  $("#api-key").value = apiKey();
  $("#key-toggle").addEventListener("click", () => openKeyForm($("#key-form").hidden));
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
    hideNotice();
    openKeyForm(false);
    loadSettings();
    pollJobs();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("#api-key").value = "";
  });
}

// ---------- numbers and words ----------

function num(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Math.abs(x) >= 100 ? x.toFixed(1) : Number(x.toPrecision(3)).toString();
}

// "1 image", "2 images": the page never says "1 false alarms".
function plural(n, noun, nouns = `${noun}s`) {
  return `${n} ${n === 1 ? noun : nouns}`;
}

// ISO 8601 time as "2026-11-30 20:11" in the station's own time zone.
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// Destructive actions ask first; the question says exactly what will happen.
function confirmed(question) {
  return window.confirm(question);
}

function actionButton(text, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}

function fileName(path) {
  return String(path || "").split(/[\\/]/).pop();
}

function setStatus(form, text, isError = false) {
  const status = $(".status", form);
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ---------- machine settings ----------

async function loadSettings(select) {
  let settings;
  try {
    settings = (await (await api("/v1/settings")).json()).settings;
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) showNotice(`Could not list machine settings: ${error.message}`);
    return;
  }
  const picker = $("#setting");
  picker.replaceChildren();
  if (!settings.length) {
    picker.append(new Option("No settings yet: create one under “Set up”", ""));
    picker.disabled = true;
    selectSetting(null);
    return;
  }
  picker.disabled = false;
  settings.forEach((s) => picker.append(new Option(`${s.name} (${s.images} nominal images)`, s.name)));
  const wanted = select || state.setting || localStorage.getItem(SETTING_STORE);
  picker.value = settings.some((s) => s.name === wanted) ? wanted : settings[0].name;
  selectSetting(picker.value);
}

function selectSetting(name) {
  if (name !== state.setting) {
    releaseUrls();
    $("#results").replaceChildren();
    state.calibrationId = null;
  }
  state.setting = name;
  if (name) localStorage.setItem(SETTING_STORE, name);
  refreshSetting();
}

async function refreshSetting() {
  const facts = $("#facts");
  $("#setting-name").textContent = state.setting || "";
  if (!state.setting) {
    facts.replaceChildren();
    $("#calibration").replaceChildren(paragraph("Create a machine setting under “Set up”, then add images of good parts.", "muted"));
    return;
  }
  let s;
  try {
    s = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}`)).json();
  } catch (error) {
    facts.replaceChildren();
    $("#calibration").replaceChildren(paragraph(`Could not read this setting: ${error.message}`, "error"));
    return;
  }
  state.scoring = s.scoring;
  state.info = s;
  const option = [...$("#setting").options].find((o) => o.value === s.name);
  if (option) option.textContent = `${s.name} (${s.images} nominal images)`;
  facts.replaceChildren(...definitions([
    ["Nominal images", String(s.images)],
    ["Active version", s.active_version === null ? "none yet" : `v${s.active_version}`],
    ["Backbone", s.backbone],
    ["Neighbours (k)", String(s.k)],
    ["Scoring", s.scoring],
    // A scorer trained on labelled defects answers instead of the plain mode once its calibration is in use.
    // A fused setting's calibration names the scores it fuses; a trained scorer answers instead of the plain mode.
    ...(s.scorer && s.scorer.startsWith("fused:") ? [["Scores fused", s.scorer.slice("fused:".length).split("+").join(", ")]]
      : s.scorer && s.scorer !== s.scoring ? [["Scorer", `${s.scorer} (trained on labelled defects)`]] : []),
    ...(s.description ? [["Description", s.description]] : []),
    // The active patch bank is missing, cut into tiles otherwise, or made of the earlier patch features.
    ...(s.reindex_note ? [["Re-index needed", s.reindex_note]] : []),
  ]));
  await Promise.all([renderCalibration(s), renderVersions(s), renderLine(s), renderReview()]);
  markStaleResults(s.calibration ? s.calibration.id : null);
}

// Versions, newest first, with a rollback to the ready one before the active (admin key; asks first).
async function renderVersions(setting) {
  const list = $("#versions");
  let versions;
  try {
    versions = (await (await api(`/v1/settings/${encodeURIComponent(setting.name)}/versions`)).json()).versions;
  } catch (error) {
    list.replaceChildren(paragraph(`Could not list versions: ${error.message}`, "error"));
    return;
  }
  if (!versions.length) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "No versions yet." }));
    return;
  }
  const active = versions.find((v) => v.active);
  const previous = active && [...versions].reverse().find((v) => v.state === "ready" && v.version < active.version);
  list.replaceChildren(...[...versions].reverse().map((v) => {
    const item = document.createElement("li");
    item.className = `version${v.active ? " active" : ""}`;
    item.append(`v${v.version} · ${plural(v.images, "image")} · ${v.backbone} · ${when(v.created_at)}`
      + (v.active ? " · in use" : v.state === "building" ? " · being built" : ""));
    if (previous && v.version === previous.version) {
      item.append(" ", actionButton("Roll back to this version", "rollback", () => rollback(setting.name, active, v)));
    }
    return item;
  }));
}

async function rollback(name, from, to) {
  if (!confirmed(`Roll ${name} back from v${from.version} to v${to.version}? Verdicts will compare parts with the ${plural(to.images, "nominal image")} of v${to.version}; v${from.version} is kept.`)) return;
  try {
    await api(`/v1/settings/${encodeURIComponent(name)}/rollback`, { method: "POST" });
    hideNotice();
  } catch (error) {
    showNotice(`Could not roll back: ${error.message}`);
  }
  await refreshSetting();
}

// A result shown before the threshold changed says which threshold it was judged with.
function markStaleResults(calibrationId) {
  document.querySelectorAll("#results .result").forEach((card) => {
    const made = card.dataset.calibrationId || null;
    const note = $(".stale", card);
    const stale = made !== calibrationId;
    note.hidden = !stale;
    if (stale) {
      note.textContent = made
        ? `Judged with an earlier threshold (calibration ${made.slice(0, 8)}); inspect again for a verdict with the current one.`
        : "Judged before this setting was calibrated; inspect again for a verdict with the current threshold.";
    }
  });
}

function definitions(pairs) {
  return pairs.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  });
}

function paragraph(text, className) {
  const p = document.createElement("p");
  p.textContent = text;
  if (className) p.className = className;
  return p;
}

// ---------- calibration ----------

async function renderCalibration(setting) {
  const box = $("#calibration");
  renderCandidate(setting);
  if (!setting.calibration) {
    state.calibrationId = null;
    const parts = [paragraph("Not calibrated: verdicts are UNCALIBRATED (score only) until you calibrate under “Set up”.", "muted")];
    if (setting.calibration_note) parts.push(paragraph(setting.calibration_note, "warning"));
    box.replaceChildren(...parts);
    return;
  }
  if (setting.calibration.id === state.calibrationId) return;  // unchanged: keep the drawn curve
  let c;
  try {
    c = await (await api(`/v1/settings/${encodeURIComponent(setting.name)}/calibrations/latest`)).json();
  } catch (error) {
    box.replaceChildren(paragraph(`Could not read the calibration: ${error.message}`, "error"));
    return;
  }
  state.calibrationId = c.id;
  const figure = document.createElement("figure");
  figure.className = "pr-curve";
  const img = document.createElement("img");
  img.alt = `Precision-recall curve of calibration ${c.id}, with the chosen threshold ${num(c.threshold)} marked`;
  img.width = 480;
  img.height = 360;
  showImage(img, `/v1/settings/${encodeURIComponent(setting.name)}/calibrations/latest/pr_curve.png`);
  const caption = document.createElement("figcaption");
  caption.textContent = c.n_fail
    ? `Precision-recall curve; policy ${c.policy}; ${plural(c.n_pass, "PASS image")} and ${plural(c.n_fail, "FAIL image")}; ${when(c.created_at)}`
    : `No precision-recall curve: this calibration had no FAIL images (policy ${c.policy}, ${plural(c.n_pass, "PASS image")}); ${when(c.created_at)}`;
  figure.append(img, caption);

  const metrics = document.createElement("dl");
  metrics.className = "facts metrics";
  metrics.append(...definitions([
    ["Threshold", num(c.threshold)],
    ["Average precision", num(c.average_precision)],
    ["ROC-AUC", num(c.roc_auc)],
    ["Precision", num(c.precision)],
    ["Recall", num(c.recall)],
    ["F1", num(c.f1)],
  ]));
  const parts = [figure, metrics, confusionTable(c.confusion)];
  (c.warnings || []).forEach((w) => parts.push(paragraph(w, "warning")));
  box.replaceChildren(...parts);
}

// A newer calibration that is recorded but not in use: why, and a way to make it live (asks first).
function renderCandidate(setting) {
  const box = $("#candidate");
  const c = setting.candidate_calibration;
  box.hidden = !c;
  if (!c) return;
  const text = paragraph(`A newer calibration (${c.id.slice(0, 8)}, ${c.policy}, threshold ${num(c.threshold)}, `
    + `${when(c.created_at)}) is recorded but not in use.`, "warning");
  const use = actionButton("Use this calibration", "activate", async () => {
    const now = setting.calibration ? `the threshold ${num(setting.calibration.threshold)}` : "no threshold";
    if (!confirmed(`Make calibration ${c.id.slice(0, 8)} live for ${setting.name}? Verdicts change from ${now} to the threshold ${num(c.threshold)}.`)) return;
    try {
      await api(`/v1/settings/${encodeURIComponent(setting.name)}/calibrations/${c.id}/activate`, { method: "POST" });
    } catch (error) {
      showNotice(`Could not activate the calibration: ${error.message}`);
    }
    await refreshSetting();
  });
  box.replaceChildren(text, use);
}

// Positive = FAIL (a defect): tp are defects caught, fp false alarms, fn missed defects.
function confusionTable(confusion) {
  const table = document.createElement("table");
  table.className = "confusion";
  const caption = table.createCaption();
  caption.textContent = "Confusion matrix on the calibration images";
  const rows = [
    ["", "Judged FAIL", "Judged PASS"],
    ["Really FAIL", `${confusion.tp} caught`, `${confusion.fn} missed`],
    ["Really PASS", plural(confusion.fp, "false alarm"), `${confusion.tn} passed`],
  ];
  rows.forEach((cells, r) => {
    const tr = (r === 0 ? table.createTHead() : table.tBodies[0] || table.createTBody()).insertRow();
    cells.forEach((text, i) => {
      const cell = document.createElement(r === 0 || i === 0 ? "th" : "td");
      if (r === 0 && i > 0) cell.scope = "col";
      if (r > 0 && i === 0) cell.scope = "row";
      cell.textContent = text;
      if (r > 0 && i > 0) cell.className = (r === 1) === (i === 1) ? "right" : "wrong";
      tr.append(cell);
    });
  });
  return table;
}

// ---------- inspecting ----------

async function inspect(files) {
  files = [...files].filter((f) => f.size > 0);
  if (!files.length) return;
  const results = $("#results");
  const live = $("#verdict-live");
  if (!state.setting) {
    results.replaceChildren(paragraph("Create or pick a machine setting first.", "error"));
    return;
  }
  releaseUrls();
  results.replaceChildren(paragraph(`Inspecting ${files.map((f) => f.name).join(", ")}…`, "muted"));
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.name));
  form.append("heatmap", "true");  // patch-scoring settings answer with a heat map; global ones ignore it
  let answer;
  try {
    answer = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/inspect`, { method: "POST", form })).json();
  } catch (error) {
    results.replaceChildren(paragraph(`Could not inspect: ${error.message}`, "error"));
    live.textContent = `Could not inspect: ${error.message}`;
    return;
  }
  results.replaceChildren(...answer.results.map((r, i) => resultCard(r, files[i])));
  if (state.info && state.info.name === state.setting) {
    renderLine(state.info);  // the new verdicts join the chart
    if (!state.review.item) renderReview();  // and may be waiting for review
  }
  live.textContent = answer.results.map((r) => `${r.source}: ${r.verdict}`).join(". ");
}

function resultCard(result, file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.classList.add(`verdict-${result.verdict}`);
  card.dataset.calibrationId = result.calibration_id || "";
  $(".verdict", card).textContent = result.verdict;
  $(".source", card).textContent = `${result.source} · ${Math.round(result.elapsed_ms)} ms`
    + (result.calibration_id ? ` · calibration ${result.calibration_id.slice(0, 8)}` : "")
    + (result.parts ? ` · ${Object.entries(result.parts).map(([part, score]) => `${part} ${score.toFixed(3)}`).join(", ")}`
      : result.scorer && result.scorer !== state.scoring ? ` · scorer ${result.scorer}` : "");
  drawScore(card, result);

  const photo = $(".photo", card);
  photo.alt = `The inspected image ${result.source}`;
  photo.src = keepUrl(URL.createObjectURL(file));
  $(".no-heat", card).textContent = state.scoring === "patch" || state.scoring === "fused"
    ? "No heat map came with this result."
    : "No heat map: this setting compares whole images (global scoring).";
  drawHeatmap(card, result);

  $(".neighbours", card).append(...result.neighbors.map((n) => neighbourItem(n, card)));
  if (!result.neighbors.length) $(".neighbours", card).append(paragraph("No nominal images to compare with yet.", "muted"));

  card.querySelectorAll(".feedback button").forEach((button) =>
    button.addEventListener("click", () => sendFeedback(card, file, button.dataset.label)));
  return card;
}

// The bar runs from 0 (or the lower of score and threshold, where one is below 0: a fused score is a z-score)
// to a bit past the larger of them; the mark is the threshold.
function drawScore(card, result) {
  const { score, threshold, verdict } = result;
  const low = Math.min(0, score, threshold ?? 0);
  const top = threshold === null ? low + Math.max(score - low, 1e-9) * 1.25
    : low + Math.max((threshold - low) * 2, (score - low) * 1.1, 1e-9);
  const at = (value) => `${Math.min(Math.max((value - low) / (top - low), 0), 1) * 100}%`;
  $(".fill", card).style.width = at(score);
  const mark = $(".mark", card);
  const bar = $(".scorebar", card);
  const text = $(".score-text", card);
  if (threshold === null) {
    // No threshold: the bar places the score among the nominal images' own scores (0% to 100%).
    mark.hidden = true;
    const share = result.nominal_percentile;
    if (share === null || share === undefined) {
      $(".fill", card).style.width = "0%";
      bar.setAttribute("aria-label", `Score ${num(score)}; no threshold and no nominal scores to compare with`);
      text.textContent = `Score ${num(score)}. No threshold yet: calibrate this setting to get PASS or FAIL.`;
      return;
    }
    const percent = Math.round(share * 100);
    $(".fill", card).style.width = `${share * 100}%`;
    bar.setAttribute("aria-label", `Score ${num(score)} is above ${percent}% of the nominal images' scores`);
    text.textContent = `Score ${num(score)} is above ${percent}% of the nominal images' own scores`
      + `${percent >= 100 ? " (above all of them)" : ""}. No threshold yet: calibrate this setting to get PASS or FAIL.`;
    return;
  }
  mark.style.left = at(threshold);
  $(".mark-label", card).textContent = `threshold ${num(threshold)}`;
  bar.setAttribute("aria-label", `Score ${num(score)} against threshold ${num(threshold)}`);
  text.textContent = verdict === "FAIL"
    ? `Score ${num(score)} is at or above the threshold ${num(threshold)}: the part differs from every nominal part.`
    : `Score ${num(score)} is below the threshold ${num(threshold)}: the part looks like the nominal parts.`;
  const p = result.p_value;
  if (p !== null && p !== undefined) {
    text.textContent += ` p = ${num(p)}: about 1 good part in ${Math.max(1, Math.round(1 / p))} scores this high.`;
  }
}

// Patch scoring adds a heat map (a PNG data URL, a URL, or an object holding one); global scoring has none.
function heatmapSource(result) {
  const h = result.heatmap ?? result.heat_map;
  if (!h) return null;
  const value = typeof h === "string" ? h : (h.png ?? h.data_url ?? h.overlay ?? h.url ?? null);
  if (typeof value !== "string" || !value) return null;
  if (/^(data:|blob:|\/|https?:)/.test(value)) return value;
  return `data:image/png;base64,${value}`;  // bare base64 PNG
}

function drawHeatmap(card, result) {
  const source = heatmapSource(result);
  if (!source) return;
  const heat = $(".heat", card);
  heat.alt = `Heat map of ${result.source}: bright where it differs most from the nominal parts`;
  if (source.startsWith("data:") || source.startsWith("blob:")) heat.src = source;
  else showImage(heat, source);
  heat.hidden = false;
  $(".no-heat", card).hidden = true;
  const toggle = $(".heat-toggle", card);
  toggle.hidden = false;
  $("input", toggle).addEventListener("change", (event) => { heat.hidden = !event.target.checked; });
}

function neighbourItem(neighbour, card) {
  const item = document.createElement("li");
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  const name = fileName(neighbour.source) || neighbour.id;
  img.alt = `Nominal image ${name}`;
  img.width = THUMBNAIL_PX;
  img.height = THUMBNAIL_PX;
  img.loading = "lazy";
  showImage(img, `${neighbour.url}?size=${THUMBNAIL_PX}`);
  const caption = document.createElement("figcaption");
  const title = document.createElement("span");
  title.className = "name";
  title.textContent = name;
  title.title = neighbour.source || neighbour.id;
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.textContent = `distance ${num(neighbour.distance)}`;
  caption.append(title, distance);
  figure.append(img, caption);
  const remove = actionButton("Remove from nominal set", "remove", () => removeNominal(neighbour, name, item, card));
  item.append(figure, remove);
  return item;
}

// A wrong image among the nominal ones (a defective part stored as good) is taken out; asks first.
async function removeNominal(neighbour, name, item, card) {
  if (!confirmed(`Remove ${name} from the nominal images of ${state.setting}? Parts will no longer be compared with it.`)) return;
  try {
    await api(neighbour.url, { method: "DELETE" });
    item.replaceChildren(paragraph(`${name} was removed from the nominal set.`, "muted"));
    $(".stale", card).hidden = false;
    $(".stale", card).textContent = "A nominal image was removed: inspect again for a verdict against the current set.";
    refreshSetting();
  } catch (error) {
    showNotice(`Could not remove ${name}: ${error.message}`);
  }
}

async function sendFeedback(card, file, label) {
  const buttons = card.querySelectorAll(".feedback button");
  const box = $(".feedback", card);
  buttons.forEach((b) => { b.disabled = true; });
  setStatus(box, "Sending…");
  const form = new FormData();
  form.append("label", label);
  form.append("files", file, file.name);
  try {
    const answer = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/feedback`, { method: "POST", form })).json();
    setStatus(box, `Thank you: ${answer.message}.`);
    card.dataset.feedback = label;
    if (answer.job_id) pollJobs();
  } catch (error) {
    setStatus(box, `Not recorded: ${error.message}`, true);
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function setupDrop() {
  const drop = $("#drop");
  const input = $("#inspect-files");
  input.addEventListener("change", () => {
    inspect(input.files);
    input.value = "";  // choosing the same file again inspects it again
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    inspect(event.dataTransfer.files);
  });
}

// ---------- jobs ----------

const isActive = (job) => job.state === "queued" || job.state === "running";

async function pollJobs() {
  clearTimeout(state.jobsTimer);
  if (document.hidden) return;  // a station left on another tab costs the server nothing; "visibilitychange" resumes
  let active = false;
  try {
    const { jobs } = await (await api("/v1/jobs?limit=20")).json();
    renderJobs(jobs);
    active = jobs.some(isActive);
    // A job that finished since the last look changed a nominal set: show the new counts.
    const finished = jobs.map((j) => j.finished_at || "").sort().pop() || "";  // ISO times sort as text
    if (state.lastFinishedAt !== null && finished > state.lastFinishedAt) refreshSetting();
    state.lastFinishedAt = finished;
  } catch (error) {
    if (error.status === 401 || error.status === 403) return;  // the key prompt is up; saving a key restarts polling
  }
  state.jobsTimer = setTimeout(pollJobs, active ? 1000 : 5000);
}

function renderJobs(jobs) {
  const list = $("#jobs");
  // This setting's jobs first, then the others, most recent first within each.
  const shown = [...jobs].sort((a, b) => (b.setting === state.setting) - (a.setting === state.setting)).slice(0, 8);
  if (!shown.length) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "No jobs yet." }));
    return;
  }
  list.replaceChildren(...shown.map(jobItem));
}

function jobItem(job) {
  const item = document.createElement("li");
  item.className = `job job-${job.state}`;
  item.dataset.jobId = job.id;
  const head = document.createElement("p");
  const what = document.createElement("strong");
  what.textContent = `${job.kind} · ${job.setting}`;
  const stateText = document.createElement("span");
  stateText.className = "job-state";
  stateText.textContent = job.state;
  head.append(what, " ", stateText);
  const progress = document.createElement("progress");
  progress.max = Math.max(job.total, 1);
  progress.value = job.state === "succeeded" ? progress.max : job.done;
  progress.setAttribute("aria-label", `${job.kind} job on ${job.setting}: ${job.done} of ${job.total}`);
  const detail = [`${job.done} / ${job.total}`];
  if (isActive(job) && job.rate) detail.push(`${num(job.rate)} images/s`);
  if (isActive(job) && job.eta_s !== null) detail.push(`about ${Math.ceil(job.eta_s)} s left`);
  if (job.error_count) detail.push(`${job.error_count} refused (${job.errors[0]?.source}: ${job.errors[0]?.reason})`);
  if (job.message) detail.push(job.message);
  const times = [job.started_at ? `started ${when(job.started_at)}` : `queued ${when(job.created_at)}`];
  if (job.finished_at) times.push(`ended ${when(job.finished_at)}`);
  item.append(head, progress, paragraph(detail.join(" · "), "muted"), paragraph(times.join(" · "), "muted times"));
  if (isActive(job)) item.append(actionButton("Cancel job", "cancel", () => cancelJob(job)));
  return item;
}

async function cancelJob(job) {
  const what = job.kind === "index"
    ? `Cancel adding images to ${job.setting}? Images stored so far stay in the nominal set.`
    : `Cancel the ${job.kind} of ${job.setting}? Its half-built version is deleted; the version in use stays.`;
  if (!confirmed(what)) return;
  try {
    await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
  } catch (error) {
    showNotice(`Could not cancel the job: ${error.message}`);
  }
  pollJobs();
}

// ---------- set-up forms ----------

async function busy(form, work) {
  const button = $("button[type=submit]", form);
  button.disabled = true;
  try {
    await work();
  } catch (error) {
    setStatus(form, error.message, true);
  } finally {
    button.disabled = false;
  }
}

function setupForms() {
  const create = $("#create-form");
  create.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(create, async () => {
      const name = $("#new-setting").value.trim();
      const description = $("#new-description").value.trim();
      await api(`/v1/settings/${encodeURIComponent(name)}`, { method: "PUT", json: description ? { description } : {} });
      setStatus(create, `Setting ${name} is ready: add images of good parts next.`);
      create.reset();
      await loadSettings(name);
    });
  });

  const upload = $("#upload-form");
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(upload, async () => {
      if (!state.setting) throw new ApiError(0, "Create or pick a machine setting first.");
      const files = [...$("#upload-files").files];
      const form = new FormData();
      files.forEach((f) => form.append("files", f, f.name));
      setStatus(upload, `Uploading ${files.length} images…`);
      const job = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/images`, { method: "POST", form })).json();
      setStatus(upload, `Accepted: ${job.total} images are being added (job ${job.job_id.slice(0, 8)}, progress under Jobs).`);
      upload.reset();
      pollJobs();
    });
  });

  const calibrate = $("#calibrate-form");
  calibrate.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(calibrate, async () => {
      if (!state.setting) throw new ApiError(0, "Create or pick a machine setting first.");
      const form = new FormData();
      [...$("#calibrate-pass").files].forEach((f) => form.append("pass", f, f.name));
      [...$("#calibrate-fail").files].forEach((f) => form.append("fail", f, f.name));
      const policy = $("#calibrate-policy").value;
      if (policy) form.append("policy", policy);  // empty: the server's default for the images given
      if (![...form.keys()].length) form.append("policy", "quantile:0.01");
      setStatus(calibrate, "Calibrating: every image is scored, this can take a while…");
      const c = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/calibrations`, { method: "POST", form })).json();
      const metrics = c.n_fail ? `, average precision ${num(c.average_precision)}` : "";
      if (c.active) {
        const before = c.replaced ? ` (was ${num(c.replaced.threshold)})` : "";
        setStatus(calibrate, `Calibrated: verdicts now use the threshold ${num(c.threshold)}${before}${metrics}.`);
      } else {
        setStatus(calibrate, `Recorded but not in use: ${c.held_back}. The threshold in use is unchanged.`, true);
      }
      calibrate.reset();
      $("#calibrate-policy").value = policy;  // the operator's choice stays for the next calibration
      await refreshSetting();
    });
  });
}

// ---------- review queue: near-threshold and FAIL verdicts, labelled one after another ----------

// The oldest queued verdict of the setting (GET .../review), with its image and what it was judged;
// a label (buttons or the keys p, f, s) goes the feedback path and the next one comes up.
async function renderReview() {
  const line = $("#review-state");
  const box = $("#review-item");
  state.review.item = null;
  if (!state.setting) {
    box.hidden = true;
    line.dataset.queued = "0";
    line.textContent = "No setting selected.";
    return;
  }
  let queue;
  try {
    queue = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/review?limit=1`)).json();
  } catch (error) {
    box.hidden = true;
    line.textContent = `Could not read the review queue: ${error.message}`;
    return;
  }
  line.dataset.queued = String(queue.queued);
  if (!queue.items.length) {
    box.hidden = true;
    line.textContent = "Nothing to review: no near-threshold or FAIL verdict is waiting.";
    return;
  }
  const item = queue.items[0];
  state.review.item = item;
  line.textContent = `${plural(queue.queued, "part")} waiting for a label, oldest first.`;
  box.dataset.inspection = String(item.id);
  $("#review-facts").replaceChildren(...definitions([
    ["Verdict", item.verdict],
    ["Queued as", item.review_reason === "near" ? "near the threshold" : "a clear FAIL"],
    ["Score", `${num(item.score)} (threshold ${num(item.threshold)})`],
    ["When", when(item.at)],
    ["Source", fileName(item.source)],
  ]));
  box.hidden = false;
  const photo = $("#review-photo");
  try {
    const blob = await (await api(item.image_url)).blob();
    if (state.review.url) URL.revokeObjectURL(state.review.url);
    state.review.url = URL.createObjectURL(blob);
    photo.src = state.review.url;
    photo.classList.remove("missing");
  } catch (error) {
    photo.removeAttribute("src");
    photo.classList.add("missing");
    photo.alt = `The part waiting for a label (not available: ${error.message})`;
  }
}

async function sendReview(label) {
  const item = state.review.item;
  if (!item || state.review.busy) return;
  const status = $("#review-status");
  const buttons = $("#review-item").querySelectorAll("button");
  state.review.busy = true;
  buttons.forEach((b) => { b.disabled = true; });
  status.classList.remove("error");
  status.textContent = "Sending…";
  const form = new FormData();
  form.append("label", label);
  try {
    const answer = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/review/${item.id}`,
      { method: "POST", form })).json();
    status.textContent = `${fileName(item.source)}: ${answer.message}.`;
    if (answer.job_id) pollJobs();
  } catch (error) {
    status.textContent = `Not recorded: ${error.message}`;
    status.classList.add("error");
  } finally {
    state.review.busy = false;
    buttons.forEach((b) => { b.disabled = false; });
  }
  await renderReview();  // the next one (an item answered elsewhere meanwhile is skipped over too)
}

function setupReview() {
  $("#review-item").querySelectorAll("button").forEach((button) => {
    button.addEventListener("click", () => sendReview(button.dataset.label));
  });
  const keys = { p: "PASS", f: "FAIL", s: "skip" };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest("input, select, textarea, [contenteditable]")) return;  // typing, not labelling
    const label = keys[event.key.toLowerCase()];
    if (!label || !state.review.item || $("#review-item").hidden) return;
    event.preventDefault();
    sendReview(label);
  });
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  setupKeyForm();
  setupDrop();
  setupForms();
  setupReview();
  $("#setting").addEventListener("change", (event) => selectSetting(event.target.value));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollJobs(); });
  loadSettings();
  pollJobs();
});

// ---------- on the line: score over time, threshold, drift ----------

// The last verdicts of the setting (GET .../inspections) drawn oldest to newest with the threshold
// in use, and the drift state (GET .../drift) with its reasons and what to do.
async function renderLine(setting) {
  const stateLine = $("#drift-state");
  const canvas = $("#score-chart");
  const advice = $("#drift-advice");
  const base = `/v1/settings/${encodeURIComponent(setting.name)}`;
  if (!setting.images) {  // nothing to compare scores with yet (the drift endpoint answers 409)
    drawChart(canvas, [], null);
    canvas.dataset.points = "0";
    stateLine.className = "drift muted";
    stateLine.textContent = "No nominal images yet: no verdicts to follow.";
    advice.hidden = true;
    return;
  }
  let page, drift;
  try {
    [page, drift] = await Promise.all([
      api(`${base}/inspections?limit=200`).then((r) => r.json()),
      api(`${base}/drift`).then((r) => r.json()),
    ]);
  } catch (error) {
    stateLine.textContent = `Could not read the history: ${error.message}`;
    stateLine.className = "drift error";
    return;
  }
  const rows = page.inspections.filter((r) => r.score !== null).reverse();
  const threshold = setting.calibration ? setting.calibration.threshold : null;
  const fails = rows.filter((r) => r.verdict === "FAIL").length;
  drawChart(canvas, rows, threshold);
  canvas.dataset.points = String(rows.length);
  canvas.setAttribute("aria-label", rows.length
    ? `Scores of the last ${plural(rows.length, "verdict")}, ${fails} FAIL`
      + (threshold === null ? ", no threshold yet" : `, threshold ${num(threshold)}`)
    : "No verdicts recorded yet");
  stateLine.dataset.state = drift.state;
  stateLine.className = `drift drift-${drift.state}`;
  stateLine.textContent = drift.enough_data
    ? `Drift: ${drift.state} (last ${plural(drift.window, "verdict")}; KS p ${num(drift.ks_p_value)}`
      + (drift.fail_rate === null ? "" : `; FAIL rate ${Math.round(drift.fail_rate * 100)}%, `
        + `${Math.round(drift.predicted_fail_rate * 100)}% expected`)
      + (drift.embedding_shift === null ? ")" : `; embedding shift ${num(drift.embedding_shift)})`)
    : `Drift: ${drift.state}, not judged yet (${drift.reasons.join("; ")})`;
  advice.textContent = drift.advice ? `What to do: ${drift.advice}` : "";
  advice.hidden = !drift.advice;
}

function drawChart(canvas, rows, threshold) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 120;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  if (!rows.length) return;
  // From 0, or from the lowest score where scores go below 0 (a fused score is a z-score).
  const low = Math.min(0, ...rows.map((r) => r.score), threshold ?? 0);
  const top = low + ((Math.max(...rows.map((r) => r.score), threshold ?? 0) - low) * 1.15 || 1);
  const x = (i) => (rows.length === 1 ? width / 2 : 6 + (i / (rows.length - 1)) * (width - 12));
  const y = (v) => height - 4 - ((v - low) / (top - low)) * (height - 8);
  const styles = getComputedStyle(document.documentElement);
  g.strokeStyle = styles.getPropertyValue("--muted") || "#888";
  g.lineWidth = 1;
  g.beginPath();
  rows.forEach((r, i) => (i ? g.lineTo(x(i), y(r.score)) : g.moveTo(x(i), y(r.score))));
  g.stroke();
  if (threshold !== null) {
    g.strokeStyle = styles.getPropertyValue("--fail") || "#c00";
    g.setLineDash([4, 3]);
    g.beginPath();
    g.moveTo(0, y(threshold));
    g.lineTo(width, y(threshold));
    g.stroke();
    g.setLineDash([]);
  }
  rows.forEach((r, i) => {
    g.fillStyle = styles.getPropertyValue(r.verdict === "FAIL" ? "--fail" : r.verdict === "PASS" ? "--pass" : "--muted") || "#888";
    g.beginPath();
    g.arc(x(i), y(r.score), 2.5, 0, 2 * Math.PI);
    g.fill();
  });
}
