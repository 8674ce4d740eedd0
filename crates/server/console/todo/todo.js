// A realtime todo app on Cairn: the example to copy.
//
// - Every todo is one document in the table `todos`, written with its own id
//   (PUT /v1/tables/todos/docs/{id}), so a write sent twice (after a node
//   died mid-request) does no harm.
// - The list on screen is never edited directly: it is what the table's
//   changefeed says, started with the documents as they are
//   (include_initial), then every change after. Other browsers' changes
//   arrive the same way as this one's.
// - When the node dies, /lib/cairn.js moves to another node and resumes the
//   feed after the last cursor, so no change is missed or shown twice.

import { Cairn, login, saveLogin } from "/lib/cairn.js";

const TABLE = "todos";
const $ = (selector) => document.querySelector(selector);

const session = await login();
const cairn = new Cairn({ token: session.token });
const todos = new Map();

function showError(error) {
  $("#error").textContent = error ? (error.code ? `${error.code}: ${error.message}` : String(error.message || error)) : "";
}

// The todo being edited, if any: the list is not redrawn under the
// person's typing; it is once the edit ends.
let editing = null;

function render() {
  if (editing) return;
  const list = $("#todos");
  const items = [...todos.values()].sort((a, b) => a.created - b.created || (a.id < b.id ? -1 : 1));
  list.replaceChildren(...items.map(item));
  const open = items.filter((todo) => !todo.done).length;
  $("#count").textContent = items.length ? `${open} of ${items.length} left` : "Nothing to do.";
}

function item(todo) {
  const li = document.createElement("li");
  li.dataset.id = todo.id;
  li.className = todo.done ? "done" : "";
  const check = document.createElement("input");
  check.type = "checkbox";
  check.checked = !!todo.done;
  check.title = "done";
  check.addEventListener("change", () => write("PATCH", todo.id, { done: check.checked }));
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = todo.title;
  title.title = "double-click to edit";
  title.addEventListener("dblclick", () => edit(li, todo));
  const remove = document.createElement("button");
  remove.className = "remove";
  remove.type = "button";
  remove.textContent = "×";
  remove.title = "delete";
  remove.addEventListener("click", () => write("DELETE", todo.id));
  li.append(check, title, remove);
  return li;
}

function edit(li, todo) {
  const input = document.createElement("input");
  input.className = "edit";
  input.value = todo.title;
  input.maxLength = 500;
  let finished = false;
  editing = todo.id;
  const finish = (save) => {
    if (finished) return;
    finished = true;
    editing = null;
    const title = input.value.trim();
    if (save && title && title !== todo.title) write("PATCH", todo.id, { title });
    render();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  li.querySelector(".title").replaceWith(input);
  input.focus();
}

async function write(method, id, body) {
  showError(null);
  try {
    await cairn.call(method, `/v1/tables/${TABLE}/docs/${encodeURIComponent(id)}`, body);
  } catch (error) {
    showError(error);
  }
}

$("#add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("#title").value.trim();
  if (!title) return;
  $("#title").value = "";
  await write("PUT", crypto.randomUUID(), { title, done: false, created: Date.now() });
});

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  saveLogin({ token: $("#token").value.trim(), cloud: null, cloudToken: null });
  location.reload();
});

async function start() {
  if (!session.token) {
    if (session.error) showError(session.error);
    $("#login").hidden = false;
    $("#add").hidden = true;
    $("#status").textContent = "not logged in";
    return;
  }
  // The table, made once; a token without the admin role cannot, and need
  // not when it exists (200 either way when it does).
  try {
    await cairn.call("PUT", `/v1/tables/${TABLE}`);
  } catch (error) {
    if (error.status !== 403) showError(error);
  }
  try {
    await cairn.refreshNodes();
  } catch (error) {
    showError(error);
  }
  cairn.feed(`/v1/tables/${TABLE}/changes`, {
    includeInitial: true,
    onReset: () => todos.clear(),
    onStatus: (text, live) => {
      $("#status").textContent = text;
      $("#status").className = "status " + (live ? "live" : "down");
    },
    onError: showError,
    onEvent: (event) => {
      if (event.state === "ready") {
        render();
        return;
      }
      if (event.type === "drop") todos.clear();
      else if (event.new_val) todos.set(event.id, event.new_val);
      else todos.delete(event.id);
      if (event.type !== "initial") render();
    },
  });
}

start();
