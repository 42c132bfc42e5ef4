/**
 * The one way the dashboard talks to Mallard: JSON over fetch, the session cookie,
 * the CSRF token on requests that change something, and a shared link's token
 * (``/?auth=TOKEN``) passed on as ``X-Mallard-Share``.
 */

let shareToken = null;
let csrfToken = null;

export function useShareToken(token) {
  shareToken = token || null;
}

export function useCsrfToken(token) {
  csrfToken = token || null;
}

/** An answer other than 2xx: ``message`` is the API's ``error``. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error ?? `the server answered ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.body = body ?? {};
  }
}

/** ``path`` with the parameters that have a value, as a same-origin URL. */
export function apiUrl(path, params = {}) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const query = search.toString();
  return query ? `${path}?${query}` : path;
}

async function call(method, path, { params, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (shareToken) headers["X-Mallard-Share"] = shareToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(apiUrl(path, params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
  const text = await response.text();
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    answer = { error: `the server answered ${response.status} with something other than JSON` };
  }
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

export function getJSON(path, params, signal) {
  return call("GET", path, { params, signal });
}

export function postJSON(path, body) {
  return call("POST", path, { body });
}
