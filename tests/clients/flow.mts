// The scripted flow with the TypeScript client that openapi-typescript generates from
// openapi/openapi.json (tests/test_clients.py generates it, type-checks this file with
// `tsc --noEmit --strict`, then runs it against a live server).
// Usage: node flow.mjs BASE_URL EMAIL
import createClient from "openapi-fetch";

import type { components, paths } from "./generated/schema.js";

type Token = components["schemas"]["Token"];
type TokenForm = paths["/api/auth/token"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"];

// A form without its grant's fields does not compile (the API would refuse it with a 422).
// @ts-expect-error: the password grant needs username and password
export const incomplete: TokenForm = { grant_type: "password" };

const [baseUrl, email] = process.argv.slice(2);
const password = "first password 1";
const newPassword = "second password 2";
const FORM = { "Content-Type": "application/x-www-form-urlencoded" };

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Error(`flow failed: ${what}`);
  }
}

const api = createClient<paths>({ baseUrl });

function bearer(token: Token): { Authorization: string } {
  return { Authorization: `Bearer ${token.access_token}` };
}

async function login(secret: string): Promise<Token> {
  const { data, response } = await api.POST("/api/auth/token", {
    body: { username: email, password: secret },
    headers: FORM,
  });
  check(response.status === 200 && data !== undefined, `login: ${response.status}`);
  check(data.token_type === "bearer" && data.expires_in > 0, "token fields");
  return data;
}

// Sign-up, then the same email again.
const created = await api.POST("/api/users/signup", { body: { email, password, fname: "Flow" } });
check(created.response.status === 201 && created.data !== undefined, `signup: ${created.response.status}`);
check(created.data.email === email && created.data.fname === "Flow" && created.data.lname === "", "signup body");
check(created.response.headers.get("Location") === `/api/users/${created.data.id}`, "signup Location");
const again = await api.POST("/api/users/signup", { body: { email, password } });
check(again.response.status === 409 && again.error !== undefined, "signup twice");
check(again.error.detail === "Email already registered.", "409 detail");

// Login: a wrong password, the right one, a refresh.
const wrong = await api.POST("/api/auth/token", { body: { username: email, password: "not it" }, headers: FORM });
check(wrong.response.status === 401 && wrong.error !== undefined, `wrong password: ${wrong.response.status}`);
check(wrong.response.headers.get("WWW-Authenticate") === "Bearer", "401 header");
const first = await login(password);
const refreshed = await api.POST("/api/auth/token", {
  body: { grant_type: "refresh_token", refresh_token: first.refresh_token },
  headers: FORM,
});
check(refreshed.response.status === 200 && refreshed.data !== undefined, `refresh: ${refreshed.response.status}`);
let token: Token = refreshed.data;
const replayed = await api.POST("/api/auth/token", {
  body: { grant_type: "refresh_token", refresh_token: first.refresh_token },
  headers: FORM,
});
check(replayed.response.status === 400 && replayed.error !== undefined, "a used refresh token is refused");
// The replay ended that login: its newest access token is refused too (docs: Security, "Tokens and logins").
const ended = await api.GET("/api/auth/me", { headers: bearer(token) });
check(ended.response.status === 401, `a replay ends the login: ${ended.response.status}`);
token = await login(password);

const me = await api.GET("/api/auth/me", { headers: bearer(token) });
check(me.data !== undefined && me.data.id === created.data.id && !me.data.is_superuser, "me");
const anonymous = await api.GET("/api/auth/me");
check(anonymous.response.status === 401, "me without a token");

// Todos: create, list, read with If-None-Match, replace and change with If-Match, delete.
const todo = await api.POST("/api/todos/", { body: { text: "write the flow" }, headers: bearer(token) });
check(todo.response.status === 201 && todo.data !== undefined, `create: ${todo.response.status}`);
check(todo.data.text === "write the flow" && todo.data.completed === false, "created todo");
const id = todo.data.id;
const createdTag = todo.response.headers.get("ETag");
check(createdTag !== null, "ETag on create");
const invalid = await api.POST("/api/todos/", { body: { text: "" }, headers: bearer(token) });
check(invalid.response.status === 422 && invalid.error !== undefined, "empty text");
const issues = invalid.error.detail;
check(Array.isArray(issues) && issues[0].loc.join(".") === "body.text" && issues[0].type === "string_too_short", "422");

const listed = await api.GET("/api/todos/", { params: { query: { limit: 5, count: true } }, headers: bearer(token) });
check(listed.data !== undefined && listed.data.length === 1 && listed.data[0].id === id, "list");
check(listed.response.headers.get("X-Total-Count") === "1", "X-Total-Count");

const item = { params: { path: { id } }, headers: bearer(token) };
const read = await api.GET("/api/todos/{id}", item);
check(read.data !== undefined && read.data.owner.email === email, "get with owner");
const tag = read.response.headers.get("ETag") ?? "";
check(tag === createdTag, "same ETag");
const notModified = await api.GET("/api/todos/{id}", {
  params: { path: { id }, header: { "If-None-Match": tag } },
  headers: bearer(token),
});
check(notModified.response.status === 304 && notModified.data === undefined, `304: ${notModified.response.status}`);

const replaced = await api.PUT("/api/todos/{id}", {
  params: { path: { id }, header: { "If-Match": tag } },
  body: { text: "flow written", completed: true },
  headers: bearer(token),
});
check(replaced.data !== undefined && replaced.data.completed && replaced.data.text === "flow written", "put");
const stale = await api.PATCH("/api/todos/{id}", {
  params: { path: { id }, header: { "If-Match": tag } },
  body: { completed: false },
  headers: bearer(token),
});
check(stale.response.status === 412 && stale.error !== undefined, `stale If-Match: ${stale.response.status}`);
const current = replaced.response.headers.get("ETag") ?? "";
const patched = await api.PATCH("/api/todos/{id}", {
  params: { path: { id }, header: { "If-Match": current } },
  body: { completed: false },
  headers: bearer(token),
});
check(patched.data !== undefined && !patched.data.completed && patched.data.text === "flow written", "patch");
const deleted = await api.DELETE("/api/todos/{id}", item);
check(deleted.response.status === 204, `delete: ${deleted.response.status}`);
const gone = await api.GET("/api/todos/{id}", item);
check(gone.response.status === 404 && gone.error !== undefined && gone.error.detail === "Todo not found", "404");

// Change the password: the wrong current one, then the right one; older tokens stop working.
const wrongCurrent = await api.POST("/api/users/me/password", {
  body: { current_password: "not it", new_password: newPassword },
  headers: bearer(token),
});
check(wrongCurrent.response.status === 403 && wrongCurrent.error !== undefined, "wrong current password");
const changed = await api.POST("/api/users/me/password", {
  body: { current_password: password, new_password: newPassword },
  headers: bearer(token),
});
check(changed.response.status === 204, `password change: ${changed.response.status}`);
check((await api.GET("/api/auth/me", { headers: bearer(token) })).response.status === 401, "old token");

// Log out: the refresh token is revoked.
token = await login(newPassword);
const logout = await api.POST("/api/auth/logout", {
  body: { refresh_token: token.refresh_token },
  headers: bearer(token),
});
check(logout.response.status === 204, `logout: ${logout.response.status}`);
const revoked = await api.POST("/api/auth/token", {
  body: { grant_type: "refresh_token", refresh_token: token.refresh_token },
  headers: FORM,
});
check(revoked.response.status === 400, "refresh after logout");
console.log("typescript flow: ok");
