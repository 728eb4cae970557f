// The admin API client: one fetch wrapper, the token in sessionStorage only, and every
// failure turned into a sentence a person can act on.

const TOKEN_KEY = 'keygate.token';
const TIMEOUT_MS = 15000;

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An admin API failure: `code` is the API's error code, or `network` / `timeout` / `http`. */
export class ApiError extends Error {
  constructor(code, message, { status = 0, field = null, requestId = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.field = field;
    this.requestId = requestId;
  }
}

/** Called when the API answers 401: the token no longer works. Set by the app. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/**
 * Calls the admin API. `token` defaults to the signed-in one; a 401 then signs out.
 * Resolves to the parsed JSON body (or null for 204).
 */
export async function call(method, path, body, { token = session.token, signOutOn401 = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      signal: controller.signal,
    });
  } catch (e) {
    if (controller.signal.aborted) {
      throw new ApiError('timeout', `keygate did not answer within ${TIMEOUT_MS / 1000} seconds.`);
    }
    throw new ApiError('network', String(e && e.message ? e.message : e));
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (response.ok) return json;

  const err = json && json.error;
  const requestId = (json && json.request_id) || response.headers.get('x-request-id');
  if (!err || typeof err.code !== 'string') {
    throw new ApiError('http', `HTTP ${response.status}`, { status: response.status, requestId });
  }
  let field = null;
  let message = String(err.message || '');
  if (err.code === 'invalid_request') {
    // The message starts with the field: "name: must be 1 to 200 characters".
    const m = /^([A-Za-z_][\w.[\]]*): (.*)$/s.exec(message);
    if (m) {
      field = m[1];
      message = m[2];
    }
  }
  const error = new ApiError(err.code, message, { status: response.status, field, requestId });
  if (response.status === 401 && signOutOn401) onUnauthorized(error);
  throw error;
}

export const api = {
  whoami: (token) => call('GET', '/v1/whoami', undefined, token ? { token, signOutOn401: false } : {}),
  listKeys: (query) => call('GET', `/v1/keys?${new URLSearchParams(query)}`),
  createKey: (body) => call('POST', '/v1/keys', body),
  updateKey: (id, body) => call('PATCH', `/v1/keys/${encodeURIComponent(id)}`, body),
  deleteKey: (id) => call('DELETE', `/v1/keys/${encodeURIComponent(id)}`),
  rollKey: (id, body) => call('POST', `/v1/keys/${encodeURIComponent(id)}/roll`, body),
  listUsers: () => call('GET', '/v1/users'),
  putUser: (id, body) => call('PUT', `/v1/users/${encodeURIComponent(id)}`, body),
  patchUser: (id, body) => call('PATCH', `/v1/users/${encodeURIComponent(id)}`, body),
  deleteUser: (id) => call('DELETE', `/v1/users/${encodeURIComponent(id)}`),
  listGroups: () => call('GET', '/v1/groups'),
  putGroup: (id, body) => call('PUT', `/v1/groups/${encodeURIComponent(id)}`, body),
  deleteGroup: (id) => call('DELETE', `/v1/groups/${encodeURIComponent(id)}`),
  audit: (query) => call('GET', `/v1/audit?${new URLSearchParams(query)}`),
};

/** How the API names fields, in the words of the console's forms. */
const FIELD_LABELS = {
  name: 'Name',
  description: 'Description',
  owner: 'Owner',
  expires_in: 'Expires',
  expires_at: 'Expires',
  never_expires: 'Never expires',
  permissions: 'Permissions',
  grace: 'Old key keeps working',
  id: 'ID',
  tenant: 'Tenant',
  groups: 'Groups',
  active: 'Active',
  cursor: 'Page',
  limit: 'Page size',
  query: 'Filter',
  body: 'Request',
};

export function fieldLabel(field) {
  if (!field) return null;
  const base = field.replace(/\[\d+\]$/, '').split('.')[0];
  return FIELD_LABELS[base] || field;
}

/** One sentence (or two) for a person; never a stack trace or a bare code. */
export function describe(error) {
  if (!(error instanceof ApiError)) {
    return `Something went wrong in the console: ${error && error.message ? error.message : error}`;
  }
  const ref = error.requestId ? ` (request id ${error.requestId})` : '';
  switch (error.code) {
    case 'network':
      return 'Could not reach keygate. Check that the gateway is running and that this page is '
        + 'open on its admin address, then try again.';
    case 'timeout':
      return `${error.message} Check the gateway and try again.`;
    case 'unauthorized':
      return 'The token was not accepted: it is wrong, or the key was revoked, disabled or has '
        + 'expired, or its owner was deactivated.';
    case 'forbidden':
      return `You are not allowed to do that${error.message ? `: ${error.message}` : '.'}`;
    case 'invalid_request': {
      const label = fieldLabel(error.field);
      return label ? `${label}: ${error.message}` : `The request was refused: ${error.message}`;
    }
    case 'not_found':
      return `${capitalized(error.message || 'that was not found')}: it may have been deleted in the meantime.`;
    case 'conflict':
      return `That conflicts with something that exists: ${error.message}.`;
    case 'store_unavailable':
      return "keygate's store is unreachable right now, so nothing was changed. Try again in a moment.";
    case 'internal':
      return `keygate hit an internal error${ref}. The change may not have been made; the gateway's log has the details.`;
    default:
      return `Unexpected answer from keygate: ${error.message}${ref}.`;
  }
}

function capitalized(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
