// The public API, as the page calls it: the key from sessionStorage as a Bearer token, and
// errors thrown with the server's own message ({"detail": ...}), which says what to fix.

const KEY = "embedserve.key";

export class ApiError extends Error {
  constructor(status, message, error) {
    super(message);
    this.status = status;
    this.error = error; // the server's kind of error: "unknown_index", "unauthorized", ...
  }
}

export function key() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

// Called with the ApiError of every 401 or 403, so the page can ask for a key.
let onDenied = () => {};
export function whenDenied(callback) {
  onDenied = callback;
}

async function send(path, { method = "GET", json, query } = {}) {
  const headers = {};
  if (key()) headers.Authorization = `Bearer ${key()}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message})`, "network");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    let error = "";
    try {
      const answer = await response.json();
      detail = answer.detail || detail;
      error = answer.error || "";
    } catch (e) {
      // not JSON: the status line is all there is to show
    }
    const failure = new ApiError(response.status, detail, error);
    if (response.status === 401 || response.status === 403) onDenied(failure);
    throw failure;
  }
  return response;
}

// The parsed JSON answer of an API call; readyz answers JSON at 503 too, so it may ask for both.
export async function api(path, options = {}) {
  return (await send(path, options)).json();
}

// An image the API answers (an index item's thumbnail), as a blob: URL an <img> can show;
// fetched rather than linked, because an <img> cannot send the key.
export async function imageUrl(path, query) {
  const response = await send(path, { query });
  return URL.createObjectURL(await response.blob());
}
