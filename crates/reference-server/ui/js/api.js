// The HTTP API, as the browser uses it. Credentials travel in the `kiln_session` cookie:
// either the browser session set by the one-time login link, or an API token the user
// pasted (set as the same cookie, so the WebSocket is authenticated the same way).

/** An error answer of the API: `{error, message}` with its HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** Listeners told when the API answers 401 (the session ended). */
const unauthorizedListeners = new Set();
export function onUnauthorized(fn) { unauthorizedListeners.add(fn); }

export async function request(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'network', 'Kiln cannot be reached; check your connection.');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, data?.error, data?.message || text || res.statusText);
    if (res.status === 401) for (const fn of unauthorizedListeners) fn(err);
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  me: () => request('GET', '/api/me'),
  logout: () => request('POST', '/api/logout'),
  /** The user's API tokens and browser sessions: `{id, name, createdAt, expiresAt, current}`. */
  tokens: () => request('GET', '/api/tokens'),
  /** `{name, expiresInSecs?}`; the answer carries the secret (`token`), shown only here. */
  createToken: (body) => request('POST', '/api/tokens', body),
  revokeToken: (id) => request('DELETE', `/api/tokens/${enc(id)}`),
  /** `{set, hint, setAt}`: the token itself is never answered. */
  hetznerToken: () => request('GET', '/api/account/hetzner-token'),
  /** Checked with the Hetzner API first: 422 invalid_token when it refuses the token. */
  setHetznerToken: (token) => request('PUT', '/api/account/hetzner-token', { token }),
  deleteHetznerToken: () => request('DELETE', '/api/account/hetzner-token'),

  /** `{providers, default}`: the node providers projects may choose on this server. */
  providers: () => request('GET', '/api/providers'),
  projects: () => request('GET', '/api/projects'),
  project: (id) => request('GET', `/api/projects/${enc(id)}`),
  createProject: (body) => request('POST', '/api/projects', body),
  updateProject: (id, body) => request('PATCH', `/api/projects/${enc(id)}`, body),
  /** `{set, hint, setAt}`: the token itself is never answered. */
  gitToken: (id) => request('GET', `/api/projects/${enc(id)}/git-token`),
  setGitToken: (id, token) => request('PUT', `/api/projects/${enc(id)}/git-token`, { token }),
  deleteGitToken: (id) => request('DELETE', `/api/projects/${enc(id)}/git-token`),

  tasks: (projectId) => request('GET', `/api/projects/${enc(projectId)}/tasks`),
  createTask: (projectId, body) => request('POST', `/api/projects/${enc(projectId)}/tasks`, body),
  updateTask: (id, body) => request('PATCH', `/api/tasks/${enc(id)}`, body),
  runTask: (id) => request('POST', `/api/tasks/${enc(id)}/run`),
  cancelTask: (id) => request('POST', `/api/tasks/${enc(id)}/cancel`),
  rerunTask: (id) => request('POST', `/api/tasks/${enc(id)}/rerun`),

  sessions: (projectId) => request('GET', `/api/projects/${enc(projectId)}/sessions`),
  session: (id) => request('GET', `/api/sessions/${enc(id)}`),
  /** `{messages, hasMore}`; `page` is `{after}`, `{before}` or nothing (the latest). */
  messages: (id, page = {}, limit = 200) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (page.after !== undefined) q.set('after', String(page.after));
    if (page.before !== undefined) q.set('before', String(page.before));
    return request('GET', `/api/sessions/${enc(id)}/messages?${q}`);
  },
  prompt: (sessionId, text) => request('POST', `/api/sessions/${enc(sessionId)}/prompt`, { text }),
  /** A chat without a task: `{vmSize?, prompt?}`. */
  openChat: (projectId, body) => request('POST', `/api/projects/${enc(projectId)}/sessions`, body),
  closeChat: (sessionId) => request('POST', `/api/sessions/${enc(sessionId)}/close`),

  nodes: () => request('GET', '/api/nodes'),
  workspace: (id) => request('GET', `/api/workspaces/${enc(id)}`),
  /** Discards a failed or cancelled task's kept workspace (409 while its task runs in it). */
  discardWorkspace: (id) => request('DELETE', `/api/workspaces/${enc(id)}`),
  workspaces: (query = {}) => request('GET', `/api/workspaces?${new URLSearchParams(query)}`),
};

/** Signs in with a pasted secret: a one-time login token or an API token. */
export async function signInWithSecret(secret) {
  secret = secret.trim();
  const link = secret.match(/[?&]token=([^&\s]+)/);
  if (link) secret = decodeURIComponent(link[1]);
  // A one-time login token: /login trades it for the browser session cookie.
  try {
    await fetch(`/login?token=${enc(secret)}`, { credentials: 'same-origin', redirect: 'manual' });
    const me = await api.me();
    localStorage.removeItem('kiln.pastedToken');
    return me;
  } catch { /* not a login token: try it as an API token */ }
  document.cookie = `kiln_session=${enc(secret)}; Path=/; SameSite=Lax; Max-Age=${30 * 24 * 3600}`;
  try {
    const me = await api.me();
    localStorage.setItem('kiln.pastedToken', '1');
    return me;
  } catch (err) {
    document.cookie = 'kiln_session=; Path=/; Max-Age=0';
    throw new ApiError(401, 'unauthorized', 'That token is not valid (or has expired).');
  }
}

/** Forgets this browser's credentials (a pasted token's cookie; an HttpOnly session cookie stays, revoked). */
export function forgetCredentials() {
  localStorage.removeItem('kiln.pastedToken');
  document.cookie = 'kiln_session=; Path=/; Max-Age=0';
}

/** Signs out: ends a browser session, or just forgets a pasted API token (never revokes it). */
export async function signOut() {
  if (localStorage.getItem('kiln.pastedToken')) {
    forgetCredentials();
  } else {
    try { await api.logout(); } catch { /* the session is gone either way */ }
  }
}
