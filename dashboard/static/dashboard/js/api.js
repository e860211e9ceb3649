// fetch() of the JSON API with a timeout, an error that carries the server's message, and the
// server's clock: ages and countdowns are computed against server time, not the wall screen's.

const TIMEOUT_MS = 15000;
let skewMs = 0;

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function serverNow() {
  return Date.now() + skewMs;
}

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const skew = date - Date.now();
  // The Date header has one-second resolution: correct only a real difference.
  skewMs = Math.abs(skew) > 2000 ? skew : 0;
}

export async function getJSON(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      signal: controller.signal,
    });
    noteServerClock(response);
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) {
        // not JSON: keep the status text
      }
      throw new ApiError(`${url.pathname}: ${response.status} ${detail}`, response.status);
    }
    return await response.json();
  } catch (err) {
    if (err.name === "AbortError") throw new ApiError(`${url.pathname}: no answer in ${TIMEOUT_MS / 1000} s`, 0);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

// Every row of a list endpoint, paginated or not.
export async function getAll(path, params) {
  const body = await getJSON(path, { limit: 5000, ...params });
  if (Array.isArray(body)) return body;
  const rows = [...body.results];
  let next = body.next;
  for (let page = 0; next && page < 20; page += 1) {
    const more = await getJSON(new URL(next).pathname + new URL(next).search);
    rows.push(...more.results);
    next = more.next;
  }
  return rows;
}

// Run async jobs with at most `limit` in flight (SLA reports are real queries).
export async function inBatches(jobs, limit) {
  const results = new Array(jobs.length);
  let index = 0;
  async function worker() {
    while (index < jobs.length) {
      const mine = index++;
      results[mine] = await jobs[mine]();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return results;
}
