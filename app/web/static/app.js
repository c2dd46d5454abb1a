// The operator page: plain JS over the public /v1 API, no framework and no build step.
// Every value from the server goes into the page through textContent, never innerHTML.
"use strict";

const KEY_STORE = "nominal.apiKey";          // sessionStorage: forgotten when the tab closes
const SETTING_STORE = "nominal.setting";     // localStorage: the station usually stays on one setting
const THUMBNAIL_PX = 160;

const $ = (selector, root = document) => root.querySelector(selector);
const state = { setting: null, scoring: null, calibrationId: null, lastFinishedAt: null, jobsTimer: null, objectUrls: [] };

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
  const option = [...$("#setting").options].find((o) => o.value === s.name);
  if (option) option.textContent = `${s.name} (${s.images} nominal images)`;
  facts.replaceChildren(...definitions([
    ["Nominal images", String(s.images)],
    ["Active version", s.active_version === null ? "none yet" : `v${s.active_version}`],
    ["Backbone", s.backbone],
    ["Neighbours (k)", String(s.k)],
    ["Scoring", s.scoring],
    ...(s.description ? [["Description", s.description]] : []),
  ]));
  await renderCalibration(s);
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
  if (!setting.calibration) {
    state.calibrationId = null;
    box.replaceChildren(paragraph("Not calibrated: verdicts are UNCALIBRATED (score only) until you calibrate under “Set up”.", "muted"));
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
  caption.textContent = `Precision-recall curve; policy ${c.policy}; ${c.n_pass} PASS and ${c.n_fail} FAIL images; ${c.created_at.slice(0, 16).replace("T", " ")}`;
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

// Positive = FAIL (a defect): tp are defects caught, fp false alarms, fn missed defects.
function confusionTable(confusion) {
  const table = document.createElement("table");
  table.className = "confusion";
  const caption = table.createCaption();
  caption.textContent = "Confusion matrix on the calibration images";
  const rows = [
    ["", "Judged FAIL", "Judged PASS"],
    ["Really FAIL", `${confusion.tp} caught`, `${confusion.fn} missed`],
    ["Really PASS", `${confusion.fp} false alarms`, `${confusion.tn} passed`],
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
  live.textContent = answer.results.map((r) => `${r.source}: ${r.verdict}`).join(". ");
}

function resultCard(result, file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.classList.add(`verdict-${result.verdict}`);
  $(".verdict", card).textContent = result.verdict;
  $(".source", card).textContent = `${result.source} · ${Math.round(result.elapsed_ms)} ms`
    + (result.calibration_id ? ` · calibration ${result.calibration_id.slice(0, 8)}` : "");
  drawScore(card, result);

  const photo = $(".photo", card);
  photo.alt = `The inspected image ${result.source}`;
  photo.src = keepUrl(URL.createObjectURL(file));
  $(".no-heat", card).textContent = state.scoring === "patch"
    ? "No heat map came with this result."
    : "No heat map: this setting compares whole images (global scoring).";
  drawHeatmap(card, result);

  $(".neighbours", card).append(...result.neighbors.map(neighbourItem));
  if (!result.neighbors.length) $(".neighbours", card).append(paragraph("No nominal images to compare with yet.", "muted"));

  card.querySelectorAll(".feedback button").forEach((button) =>
    button.addEventListener("click", () => sendFeedback(card, file, button.dataset.label)));
  return card;
}

// The bar runs from 0 to a bit past the larger of score and threshold; the mark is the threshold.
function drawScore(card, result) {
  const { score, threshold, verdict } = result;
  const top = threshold === null ? Math.max(score, 1e-9) * 1.25 : Math.max(threshold * 2, score * 1.1, 1e-9);
  $(".fill", card).style.width = `${Math.min(score / top, 1) * 100}%`;
  const mark = $(".mark", card);
  const bar = $(".scorebar", card);
  const text = $(".score-text", card);
  if (threshold === null) {
    mark.hidden = true;
    bar.setAttribute("aria-label", `Score ${num(score)}; no threshold yet`);
    text.textContent = `Score ${num(score)}. No threshold yet: calibrate this setting to get PASS or FAIL.`;
    return;
  }
  mark.style.left = `${(threshold / top) * 100}%`;
  $(".mark-label", card).textContent = `threshold ${num(threshold)}`;
  bar.setAttribute("aria-label", `Score ${num(score)} against threshold ${num(threshold)}`);
  text.textContent = verdict === "FAIL"
    ? `Score ${num(score)} is at or above the threshold ${num(threshold)}: the part differs from every nominal part.`
    : `Score ${num(score)} is below the threshold ${num(threshold)}: the part looks like the nominal parts.`;
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

function neighbourItem(neighbour) {
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
  item.append(figure);
  return item;
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
    const finished = Math.max(0, ...jobs.map((j) => j.finished_at || 0));
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
  item.append(head, progress, paragraph(detail.join(" · "), "muted"));
  return item;
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
      form.append("policy", $("#calibrate-policy").value);
      setStatus(calibrate, "Calibrating: every image is scored, this can take a while…");
      const c = await (await api(`/v1/settings/${encodeURIComponent(state.setting)}/calibrations`, { method: "POST", form })).json();
      setStatus(calibrate, `Calibrated: threshold ${num(c.threshold)}, average precision ${num(c.average_precision)}.`);
      calibrate.reset();
      await refreshSetting();
    });
  });
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  setupKeyForm();
  setupDrop();
  setupForms();
  $("#setting").addEventListener("change", (event) => selectSetting(event.target.value));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollJobs(); });
  loadSettings();
  pollJobs();
});
