// Search: a text or an image → POST /search on the chosen index → a grid of the nearest items with
// their scores and metadata; items read from images show a thumbnail from
// GET /indexes/{name}/items/{id}/image, and an image query's hits an "explain" (POST /explain).

import { api, imageUrl } from "./api.js";
import { $, busy, el, imageDrop, showError, showOverlay } from "./ui.js";

// Whether an item's metadata records where its image came from (a data set position, a file).
const hasImage = (metadata) => Boolean(metadata && metadata.source && ("path" in metadata || "position" in metadata));

function describe(metadata) {
  const shown = Object.entries(metadata || {}).filter(([name]) => name !== "source");
  return el("dl", {}, ...shown.flatMap(([name, value]) => [
    el("dt", { textContent: name }), el("dd", { textContent: typeof value === "object" ? JSON.stringify(value) : String(value) }),
  ]));
}

export function setup(server) {
  const form = $("search-form");
  const error = $("search-error");
  const figure = $("search-explain");
  let image = null;
  const mode = () => form.querySelector("input[name=mode]:checked").value;
  form.querySelectorAll("input[name=mode]").forEach((radio) => radio.addEventListener("change", () => {
    $("search-text-field").hidden = mode() !== "text";
    $("search-drop").hidden = mode() !== "image";
  }));
  imageDrop($("search-drop"), $("search-file"), $("search-preview"), (dataUrl) => {
    image = dataUrl;
    form.requestSubmit();
  });

  async function explain(index, id) {
    showError(error, null);
    try {
      const answer = await api("/explain", { method: "POST", json: { image, index, id, grid: 8, overlay: true } });
      showOverlay(figure, answer.overlay, `what makes item ${id} near (red: for, blue: against), ` +
        `${answer.rows}×${answer.cols} occlusion grid; cosine ${answer.score.toFixed(3)}`);
    } catch (e) {
      if (e.status === 404 && e.error === "not_found") server.explain = false;
      showError(error, e.status === 404 && e.error === "not_found" ? new Error("this server has no /explain") : e);
    }
  }

  function card(index, hit, query) {
    const thumb = el("img", { alt: `item ${hit.id}`, className: "thumb" });
    if (hasImage(hit.metadata)) {
      imageUrl(`/indexes/${encodeURIComponent(index)}/items/${hit.id}/image`, { size: 128 })
        .then((url) => { thumb.src = url; })
        .catch(() => thumb.classList.add("missing"));
    } else {
      thumb.classList.add("missing");
    }
    const button = server.explain && query.image ? el("button", {
      type: "button", className: "small", textContent: "explain", onclick: () => explain(index, hit.id),
    }) : null;
    return el("li", { className: "hit", dataset: { id: hit.id } }, thumb,
      el("p", { className: "score" }, el("strong", { textContent: hit.score.toFixed(3) }), ` · id ${hit.id}`),
      describe(hit.metadata), button);
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const query = { index: $("search-index").value || null, k: Number($("search-k").value) || 10 };
    if (mode() === "text") query.text = $("search-text").value;
    else if (image) query.image = image;
    else return showError(error, new Error("drop or pick an image first"));
    busy(form, async () => {
      showError(error, null);
      figure.hidden = true;
      const started = performance.now();
      try {
        const answer = await api("/search", { method: "POST", json: query });
        const ms = performance.now() - started;
        $("search-meta").textContent = `${answer.index} ${answer.version} · model ${answer.model} ${answer.model_version} · ` +
          `${answer.hits.length} hits · ${ms.toFixed(0)} ms`;
        $("search-hits").replaceChildren(...answer.hits.map((hit) => card(answer.index, hit, query)));
      } catch (e) {
        showError(error, e);
      }
    });
  });
}
