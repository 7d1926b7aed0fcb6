// Small DOM helpers the tabs share: elements, errors, bars, and the image drop zones.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node[name] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const $ = (id) => document.getElementById(id);

// Show `error` (an ApiError's message is the server's) in the paragraph `target`; null hides it.
export function showError(target, error) {
  target.hidden = !error;
  target.textContent = error ? error.message : "";
}

// One row of a bar chart: label, bar (width = fraction of the row, set through the CSSOM, which
// the page's Content-Security-Policy allows where a style attribute would not), and value text.
export function bar(label, fraction, text, extra = null) {
  const fill = el("span", { className: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return el("li", {}, el("span", { className: "label", textContent: label }),
    el("span", { className: "track" }, fill), el("span", { className: "value", textContent: text }), extra);
}

// A drop zone with a file input inside: calls `onImage(dataUrl)` for a dropped or picked image
// and shows it in `preview`. The data: URL is what the API takes as base64.
export function imageDrop(zone, input, preview, onImage) {
  const read = (file) => {
    if (!file || !file.type.startsWith("image/")) return;
    const reader = new FileReader();
    reader.onload = () => {
      preview.src = reader.result;
      preview.hidden = false;
      onImage(reader.result);
    };
    reader.readAsDataURL(file);
  };
  input.addEventListener("change", () => read(input.files[0]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    read(e.dataTransfer.files[0]);
  });
}

// Fill a <select> with `options` ([value, text] pairs), keeping the current choice when it is still there.
export function fillSelect(select, options) {
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => el("option", { value, textContent: text })));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

// Show an explanation overlay (a base64 PNG) in `figure` with a caption.
export function showOverlay(figure, overlay, caption) {
  figure.querySelector("img").src = overlay.startsWith("data:") ? overlay : `data:image/png;base64,${overlay}`;
  figure.querySelector("figcaption").textContent = caption;
  figure.hidden = false;
}

// Busy state of a form's submit button while `work` runs.
export async function busy(form, work) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  form.classList.add("busy");
  try {
    return await work();
  } finally {
    button.disabled = false;
    form.classList.remove("busy");
  }
}
