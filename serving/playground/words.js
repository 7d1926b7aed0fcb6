// Words: GET /analogy (a − b + c, 3CosAdd or 3CosMul) and GET /similar, as bars of cosine scores.

import { api } from "./api.js";
import { $, bar, busy, showError } from "./ui.js";

function show(answer, title) {
  $("words-meta").textContent = `${title} · ${answer.model} ${answer.version}`;
  $("words-results").replaceChildren(...answer.results.map((r) => bar(r.word, r.score, r.score.toFixed(3))));
}

export function setup() {
  const error = $("words-error");
  const run = (form, path, query, title) => busy(form, async () => {
    showError(error, null);
    try {
      const model = $("words-model").value;
      show(await api(path, { query: { ...query, k: 10, ...(model ? { model } : {}) } }), title);
    } catch (e) {
      showError(error, e);
    }
  });
  $("analogy-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const [a, b, c] = ["a", "b", "c"].map((name) => $(`analogy-${name}`).value.trim());
    const method = $("analogy-method").value;
    run(e.target, "/analogy", { a, b, c, method }, `${a} − ${b} + ${c} (${method === "3cosmul" ? "3CosMul" : "3CosAdd"})`);
  });
  $("similar-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const word = $("similar-word").value.trim();
    run(e.target, "/similar", { word }, `nearest to ${word}`);
  });
}
