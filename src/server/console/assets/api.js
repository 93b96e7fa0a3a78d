// The gateway's JSON API as the console calls it: the caller's bearer token (kept for this tab
// only, in sessionStorage, and sent only as an Authorization header), errors as google.rpc.Status
// read into something a person can act on, and NDJSON watches read with fetch streaming.

const TOKEN_KEY = 'dds-gateway.token';

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

// gRPC code names, by number.
const CODES = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
  'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
  'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
];

const DETAIL = 'type.googleapis.com/google.rpc.';

// An answer that is not a success: the gRPC code, the ErrorInfo reason and metadata, the
// BadRequest field violations and the RetryInfo delay, when the gateway sent them.
export class ApiError extends Error {
  constructor(httpStatus, status, fallback) {
    super((status && status.message) || fallback || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.code = status && Number.isInteger(status.code) ? (CODES[status.code] || String(status.code)) : '';
    this.reason = '';
    this.metadata = {};
    this.violations = [];
    this.retryDelay = '';
    for (const detail of (status && status.details) || []) {
      const type = detail['@type'] || '';
      if (type === `${DETAIL}ErrorInfo`) {
        this.reason = detail.reason || '';
        this.metadata = detail.metadata || {};
      } else if (type === `${DETAIL}BadRequest`) {
        this.violations = detail.fieldViolations || [];
      } else if (type === `${DETAIL}RetryInfo`) {
        this.retryDelay = detail.retryDelay || '';
      }
    }
  }

  static fromText(httpStatus, text) {
    let status = null;
    try {
      status = JSON.parse(text);
    } catch {
      // Not JSON (a proxy's page): the HTTP status says what there is to say.
    }
    return new ApiError(httpStatus, status, `HTTP ${httpStatus}`);
  }

  get unauthenticated() {
    return this.httpStatus === 401 || this.code === 'UNAUTHENTICATED';
  }
}

function headers(extra) {
  const all = { Accept: 'application/json', ...extra };
  const token = session.token();
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

const INIT = { cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };

async function send(method, path, body, signal) {
  const init = { ...INIT, method, signal, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, null, `The gateway cannot be reached (${err.message}).`);
  }
  const text = await response.text();
  if (!response.ok) throw ApiError.fromText(response.status, text);
  return text ? JSON.parse(text) : {};
}

export const api = {
  get: (path, signal) => send('GET', path, undefined, signal),
  post: (path, body, signal) => send('POST', path, body || {}, signal),
};

// Reads a newline-delimited JSON stream, calling `onMessage` for each message, until it ends
// or `signal` aborts it. An error line (`{"error": Status}`) ends it with an ApiError.
export async function watch(path, onMessage, signal) {
  let response;
  try {
    response = await fetch(path, { ...INIT, signal, headers: headers({ Accept: 'application/x-ndjson' }) });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, null, `The gateway cannot be reached (${err.message}).`);
  }
  if (!response.ok) throw ApiError.fromText(response.status, await response.text());
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (!line) continue;
      const message = JSON.parse(line);
      if (message.error) throw new ApiError(200, message.error);
      onMessage(message);
    }
  }
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
