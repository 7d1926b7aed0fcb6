// The playground page: tabs, the API key field, and the model and index pickers, filled from
// GET /readyz (models with their kinds) and GET /indexes; each tab's own code is in its module.

import { api, key, setKey, whenDenied } from "./api.js";
import { $, fillSelect } from "./ui.js";
import * as jobs from "./jobs.js";
import * as search from "./search.js";
import * as words from "./words.js";
import * as zeroShot from "./zero_shot.js";

// What the tabs share: what the server serves, whether it explains, and hooks on tab changes and loads.
const server = { models: [], indexes: [], explain: false, onTab: [], onLoad: [] };
const TABS = ["zero-shot", "search", "words", "jobs"];

function showTab(name) {
  const tab = TABS.includes(name) ? name : TABS[0];
  for (const other of TABS) $(other).hidden = other !== tab;
  document.querySelectorAll("#tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === tab)));
  server.onTab.forEach((callback) => callback(tab));
}

function askForKey(reason) {
  $("key-form").hidden = false;
  $("server").textContent = reason;
  $("server").className = "server error";
}

async function load() {
  let ready;
  try {
    ready = await api("/readyz");
  } catch (e) {
    $("server").textContent = `not ready: ${e.message}; retrying`;
    setTimeout(load, 2000);
    return;
  }
  server.models = (ready.models || []).filter((m) => m.state === "loaded"); // none without a key: /indexes asks for one
  try {
    server.indexes = (await api("/indexes")).indexes;
    const openapi = await api("/openapi.json"); // which optional routes this server has
    server.explain = "/explain" in openapi.paths;
  } catch (e) {
    if (e.status === 401 || e.status === 403) return; // askForKey has said so; load() runs again with a key
    server.indexes = [];
  }
  document.querySelectorAll("select[data-kinds]").forEach((select) => {
    const kinds = select.dataset.kinds.split(" ");
    fillSelect(select, server.models.filter((m) => kinds.includes(m.kind)).map((m) => [m.name, `${m.name} ${m.version}`]));
  });
  const indexes = server.indexes.map((i) => [i.name, `${i.name} (${i.count} items, ${i.model ?? "no model"})`]);
  fillSelect($("search-index"), indexes);
  fillSelect($("job-index"), indexes);
  $("server").textContent = `${ready.status} · ${server.models.length} models · ${server.indexes.length} indexes`;
  $("server").className = "server";
  server.onLoad.forEach((callback) => callback());
  showTab(location.hash.slice(1)); // now that the pickers are filled, a tab may start polling
}

whenDenied((e) => askForKey(e.status === 401 ? "this server needs an API key" : `the key was refused: ${e.message}`));
$("key").value = key();
$("key-form").hidden = !key();
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setKey($("key").value.trim());
  load();
});
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => { location.hash = b.dataset.tab; }));
window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));

zeroShot.setup(server);
search.setup(server);
words.setup(server);
jobs.setup(server);
showTab(location.hash.slice(1));
load();
