// Zero-shot: an image and class names → POST /zero-shot → one probability bar per class, with
// the normalisation the server applied and the round trip's latency; "explain" on a bar asks
// POST /explain (when the server has it) where in the image that class is.

import { api } from "./api.js";
import { $, bar, busy, el, imageDrop, showError, showOverlay } from "./ui.js";

const lines = (text) => text.split("\n").map((line) => line.trim()).filter(Boolean);

export function setup(server) {
  const form = $("zs-form");
  const error = $("zs-error");
  const figure = $("zs-explain");
  let image = null; // the picked image, as a data: URL
  imageDrop($("zs-drop"), $("zs-file"), $("zs-preview"), (dataUrl) => {
    image = dataUrl;
    form.requestSubmit();
  });

  const request = () => {
    const body = { images: [image], classes: lines($("zs-classes").value), model: $("zs-model").value || null };
    const templates = lines($("zs-templates").value);
    if (templates.length) body.templates = templates;
    if ($("zs-normalization").value) body.normalization = $("zs-normalization").value;
    return body;
  };

  async function explain(label, body) {
    showError(error, null);
    try {
      const answer = await api("/explain", {
        method: "POST",
        json: { ...body, images: undefined, image, label, grid: 8, overlay: true },
      });
      showOverlay(figure, answer.overlay, `where “${answer.target.label}” is (red: for it, blue: against), ` +
        `${answer.rows}×${answer.cols} occlusion grid; probability ${answer.score.toFixed(3)}`);
    } catch (e) {
      if (e.status === 404 && e.error === "not_found") server.explain = false; // a server without /explain
      showError(error, e.status === 404 && e.error === "not_found" ? new Error("this server has no /explain") : e);
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!image) return showError(error, new Error("drop or pick an image first"));
    busy(form, async () => {
      showError(error, null);
      figure.hidden = true;
      const body = request();
      const started = performance.now();
      try {
        const answer = await api("/zero-shot", { method: "POST", json: body });
        const ms = performance.now() - started;
        $("zs-meta").textContent = `${answer.model} ${answer.version} · normalisation: ${answer.normalization} · ` +
          `${answer.templates.length} template(s) · ${ms.toFixed(0)} ms`;
        $("zs-bars").replaceChildren(...answer.results[0].labels.map((l) => {
          const button = server.explain ? el("button", {
            type: "button", className: "small", textContent: "explain", onclick: () => explain(l.label, body),
          }) : null;
          const row = bar(l.label, l.probability, `${(l.probability * 100).toFixed(1)}%`, button);
          row.dataset.probability = l.probability;
          row.title = `score ${l.score.toFixed(4)} · cosine ${l.cosine.toFixed(4)}`;
          return row;
        }));
      } catch (e) {
        showError(error, e);
      }
    });
  });
}
