// Jobs: GET /jobs polled every two seconds while the tab is shown (and the page visible), each
// job with a progress bar; POST /jobs starts a re-embedding, DELETE /jobs/{id} cancels one.

import { api } from "./api.js";
import { $, busy, el, showError } from "./ui.js";

const POLL_MS = 2000;
const FINISHED = ["succeeded", "failed", "cancelled"];

function row(job, onCancel) {
  const fraction = job.total ? job.done / job.total : job.state === "succeeded" ? 1 : 0;
  const fill = el("span", { className: `fill ${job.state}` });
  fill.style.width = `${fraction * 100}%`;
  const rate = job.items_per_second ? ` · ${job.items_per_second.toFixed(0)} items/s` : "";
  const eta = job.eta_s && !FINISHED.includes(job.state) ? ` · ${job.eta_s.toFixed(0)} s left` : "";
  const written = job.index_version ? ` · wrote ${job.spec.index} ${job.index_version}` : "";
  return el("li", { className: "job", dataset: { id: job.id, state: job.state } },
    el("p", {}, el("strong", { textContent: `${job.spec.index} ← ${job.spec.source}` }),
      ` with ${job.spec.model}`, el("span", { className: `state ${job.state}`, textContent: job.state })),
    el("span", { className: "track" }, fill),
    el("p", { className: "meta", textContent: `${job.done}/${job.total ?? "?"} items${job.failed ? `, ${job.failed} failed` : ""}` +
      `${rate}${eta}${written}${job.error ? ` · ${job.error}` : ""}` }),
    FINISHED.includes(job.state) ? null : el("button", { type: "button", className: "small", textContent: "cancel", onclick: () => onCancel(job.id) }));
}

export function setup(server) {
  const error = $("jobs-error");
  let timer = null;

  async function refresh() {
    try {
      const { jobs } = await api("/jobs");
      $("jobs-list").replaceChildren(...jobs.slice().reverse().map((job) => row(job, cancel)));
      if (!jobs.length) $("jobs-list").replaceChildren(el("li", { className: "empty", textContent: "no jobs yet" }));
    } catch (e) {
      showError(error, e);
      stop(); // a server without jobs, or without the key: polling again would only repeat it
    }
  }

  async function cancel(id) {
    try {
      await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
      refresh();
    } catch (e) {
      showError(error, e);
    }
  }

  const stop = () => {
    clearInterval(timer);
    timer = null;
  };
  // Poll only while someone is looking: the tab shown and the browser tab visible.
  const poll = () => {
    const shown = !$("jobs").hidden && document.visibilityState === "visible";
    if (shown && !timer) {
      refresh();
      timer = setInterval(refresh, POLL_MS);
    } else if (!shown) stop();
  };
  document.addEventListener("visibilitychange", poll);
  server.onTab.push(poll);

  const index = $("job-index");
  const source = $("job-source");
  const follow = () => {
    const chosen = server.indexes.find((i) => i.name === index.value);
    source.value = chosen ? `index:${chosen.name}` : source.value;
    if (chosen && chosen.model) $("job-model").value = chosen.model;
  };
  index.addEventListener("change", follow);
  server.onLoad.push(follow);

  $("job-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(e.target, async () => {
      showError(error, null);
      try {
        await api("/jobs", { method: "POST", json: {
          source: source.value.trim(), model: $("job-model").value, index: index.value,
          batch_size: Number($("job-batch").value) || 256,
        } });
        await refresh();
        poll();
      } catch (e) {
        showError(error, e);
      }
    });
  });
}
