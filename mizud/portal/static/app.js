// The enduser portal: every page is built from /mvapireq calls (spec: "Implementing a webportal based on the API").
//
// After login the browser keeps only MD5("tU29m" + username + password + salt1) for the session, never the
// password: each request sends authv3_ + MD5(that + salt2 + serversalt + nonce) with a fresh salt2 and the
// nonce from preauth. The old deep links (?function=PAGE&username=..&password=.. or &md5=..&salt=..) log in
// and open PAGE; an md5 link's session sends that md5 (portalmd5) with each request.
"use strict";

const CONFIG = window.MIZUD || {};
const STORE = "mizud-session";
const PAGES = {};
const OLD_PAGES = {
  login: "dashboard", newuser: "signup", callhistory: "history", tariffs: "tariffs", recharge: "recharge",
  publictariffs: "publictariffs", sms: "sms", notify: "forwarding", callback: "calls", forwarding: "forwarding",
  p2p: "calls", mydetails: "details",
};
const STATUS_WORDS = ["does not exist", "offline", "online", "calling", "speaking"];
let session = JSON.parse(sessionStorage.getItem(STORE) || "null");
let nonce = { value: "", at: 0 };
let polling = null;

// -- talking to the API ------------------------------------------------------------------------

function randomSalt() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

class ApiError extends Error {}

async function post(params) {
  const body = new URLSearchParams({ format: "json", ...params });
  if (CONFIG.authkey) body.set("authkey", CONFIG.authkey);
  let response;
  try {
    response = await fetch("/mvapireq/", { method: "POST", body, credentials: "omit", cache: "no-store" });
  } catch (problem) {
    throw new ApiError("The server cannot be reached. Check your connection and try again.");
  }
  let answer;
  try {
    answer = await response.json();
  } catch (problem) {
    throw new ApiError(`The server answered something unexpected (HTTP ${response.status}).`);
  }
  return answer;
}

async function freshNonce(force) {
  const lifetime = (CONFIG.noncettl || 1800) * 500;  // renewed at half its lifetime
  if (!force && nonce.value && Date.now() - nonce.at < lifetime) return nonce.value;
  const answer = await post({ apientry: "preauth" });
  const found = answer.status === "OK" ? nonceIn(answer.message) : "";
  if (!found) throw new ApiError("The server did not give a login nonce.");
  nonce = { value: found, at: Date.now() };
  return nonce.value;
}

// A nonce the server hands out: the whole message, and nothing else (error texts may echo user input).
function nonceIn(message) {
  const found = /^new nonce is:([0-9a-f]{16,64})EOF$/.exec(message || "");
  return found ? found[1] : "";
}

// One API call: its records, or an ApiError with the server's reason in plain words.
async function api(fn, params = {}, { auth = true } = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const request = { apientry: fn, ...params };
    if (auth && session) {
      request.authid = session.username;
      const current = await freshNonce(attempt > 0);
      const salt2 = randomSalt();
      request.authsalt2 = salt2;
      request.nonce = current;
      if (session.portalmd5) {
        // An auto-login link: its md5 is the secret, proven afresh for every request like authmd5.
        request.portalsalt = session.portalsalt;
        request.portalmd5 = md5(session.portalmd5 + salt2 + (CONFIG.serversalt || "") + current);
      } else {
        request.authsalt1 = session.salt1;
        request.authmd5 = "authv3_" + md5(session.inner + salt2 + (CONFIG.serversalt || "") + current);
      }
    }
    const answer = await post(request);
    if (answer.status === "OK") return { message: answer.message || "", data: answer.data || [] };
    const again = answer.code === 499 || answer.code === 403 ? nonceIn(answer.message) : "";
    if (again && attempt === 0) {
      nonce = { value: again, at: Date.now() };
      continue;
    }
    if (auth && session && /^(wrong authentication|banned)/.test(answer.message || "")) {
      // The session no longer works (password changed, account disabled): stop before the lockout.
      endSession();
      if (polling) { clearInterval(polling); polling = null; }
      history.replaceState(null, "", location.pathname + "#login");
      route(true);
    }
    throw new ApiError(explain(answer.message || "failed"));
  }
  throw new ApiError("The server keeps asking for a new login.");
}

function explain(message) {
  const names = { u_username: "the username", u_password: "the password", u_email: "the e-mail address",
                  u_name: "the name", u_phone: "the phone number", anum: "the first number", bnum: "the number",
                  num: "the number", txt: "the message", pin: "the PIN", credit: "the amount" };
  message = message.replace(/^(u_\w+|anum|bnum|num|txt|pin|credit)\b/, (name) => names[name] || name)
    .replace(/ \((\w+)=\d+\)$/, "");
  const words = {
    "wrong authentication": "The username or password is wrong.",
    "access denied": "Your account may not do this.",
    "rate limited": "Too many requests: wait a few seconds and try again.",
    "banned: too many failed authentications": "Too many failed logins: wait a few minutes and try again.",
  };
  return words[message] || message.charAt(0).toUpperCase() + message.slice(1) + (/[.!?]$/.test(message) ? "" : ".");
}

// -- page plumbing -----------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function busy(work, button) {
  showError("");
  $("#progress").hidden = false;
  if (button) button.disabled = true;
  try {
    return await work();
  } catch (problem) {
    showError(problem instanceof ApiError ? problem.message : "Something went wrong: " + problem);
    return undefined;
  } finally {
    $("#progress").hidden = true;
    if (button) button.disabled = false;
  }
}

function render(html) {
  const main = $("#page");
  main.innerHTML = html;
  const heading = $("h2", main);
  if (heading) document.title = heading.textContent + " - My account";
}

// A form whose submit runs work(values, form) with progress shown and errors in words.
function onSubmit(selector, work) {
  const form = $(selector);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    busy(() => work(values, form), $("button[type=submit]", form));
  });
}

function field(name, label, { type = "text", value = "", required = false, autocomplete = "off", extra = "" } = {}) {
  return `<label for="f-${name}">${esc(label)}</label>
    <input id="f-${name}" name="${name}" type="${type}" value="${esc(value)}" autocomplete="${autocomplete}"
      ${required ? "required" : ""} ${extra}>`;
}

function table(records, columns) {
  if (!records.length) return `<p class="muted">Nothing to show.</p>`;
  const head = columns.map(([, title]) => `<th scope="col">${esc(title)}</th>`).join("");
  const rows = records.map((r) => `<tr>${columns.map(([key]) => `<td>${esc(r[key])}</td>`).join("")}</tr>`).join("");
  return `<div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${rows}</tbody></table></div>`;
}

function go(page) {
  if (location.hash !== "#" + page) location.hash = page;
  else route();
}

function route(keepError) {
  if (polling) { clearInterval(polling); polling = null; }
  if (keepError !== true) showError("");
  let page = location.hash.replace(/^#/, "") || (session ? "dashboard" : "login");
  const open = ["login", "signup", "publictariffs"];
  if (!session && !open.includes(page)) page = "login";
  if (session && (page === "login" || page === "signup")) page = "dashboard";
  const build = PAGES[page] || PAGES.dashboard;
  $("#nav").hidden = !session;
  $("#brand").textContent = session ? `My account: ${session.username}` : "My account";
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === "#" + page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  build();
  $("#page").focus();
}

function startSession(username, password) {
  const salt1 = randomSalt();
  session = { username, salt1, inner: md5("tU29m" + username + password + salt1) };
  sessionStorage.setItem(STORE, JSON.stringify(session));
}

function endSession() {
  session = null;
  nonce = { value: "", at: 0 };
  sessionStorage.removeItem(STORE);
}

async function login(username, password) {
  startSession(username, password);
  try {
    await api("login");
  } catch (problem) {
    endSession();
    throw problem;
  }
}

// -- pages -------------------------------------------------------------------------------------

PAGES.login = () => {
  render(`<form class="card" id="login" aria-labelledby="h-login"><h2 id="h-login">Log in</h2>
    ${field("username", "Username", { required: true, autocomplete: "username" })}
    ${field("password", "Password", { type: "password", required: true, autocomplete: "current-password" })}
    <button class="primary" type="submit">Log in</button>
    <p>No account yet? <a href="#signup">Sign up</a>${CONFIG.publictariffs ? ' &middot; <a href="#publictariffs">Our tariffs</a>' : ""}</p>
    </form>`);
  onSubmit("#login", async (v) => {
    await login(v.username.trim(), v.password);
    go("dashboard");
  });
};

PAGES.signup = () => {
  render(`<form class="card" id="signup"><h2>Sign up</h2>
    ${field("u_username", "Username", { required: true, autocomplete: "username" })}
    ${field("u_password", "Password", { type: "password", required: true, autocomplete: "new-password",
      extra: 'minlength="8" aria-describedby="pwrules"' })}
    <p id="pwrules" class="muted">At least 8 characters, with letters and digits, not containing the username.</p>
    ${field("u_name", "Full name", { autocomplete: "name" })}
    ${field("u_email", "E-mail", { type: "email", required: true, autocomplete: "email" })}
    ${field("u_phone", "Phone", { type: "tel", autocomplete: "tel" })}
    <button class="primary" type="submit">Create my account</button>
    <p>Already have one? <a href="#login">Log in</a></p></form>`);
  onSubmit("#signup", async (v) => {
    await api("newuseru", v, { auth: false });
    await login(v.u_username.trim(), v.u_password);
    go("dashboard");
  });
};

PAGES.dashboard = () => {
  render(`<section><h2>Dashboard</h2><p>Balance</p><p class="big" id="balance">&hellip;</p>
    <p>Phone: <span id="regstate">&hellip;</span></p></section>
    <section><h2>Latest calls</h2><div id="latest"></div><p><a href="#history">All calls</a></p></section>`);
  busy(async () => {
    const balance = await api("balance");
    $("#balance").textContent = balance.message;
    const status = await api("status");
    $("#regstate").textContent = STATUS_WORDS[Number(status.message)] || status.message;
    const calls = await api("cdr", { maxcount: "5", fields: "normal" });
    $("#latest").innerHTML = table(calls.data, [["datum", "When"], ["callednumber", "Number"], ["duration", "Seconds"], ["cost", "Cost"]]);
  });
};

PAGES.history = () => {
  render(`<form class="card" id="filters"><h2>Call history</h2><div class="row">
    <div><label for="f-days">Period</label><select id="f-days" name="days">
      <option value="today">Today</option><option value="lastweek" selected>Last 7 days</option>
      <option value="lastmonth">Last 30 days</option><option value="365">Last year</option></select></div>
    <div><label for="f-dir">Direction</label><select id="f-dir" name="dir"><option value="all">All</option>
      <option value="out">Outgoing</option><option value="in">Incoming</option></select></div>
    <div><label for="f-type">Calls</label><select id="f-type" name="type"><option value="all">All</option>
      <option value="connected">Connected</option><option value="notconnected">Not connected</option></select></div>
    <div>${field("called", "Number starts with", { extra: 'inputmode="tel"' })}</div></div>
    <button class="primary" type="submit">Show</button>
    <button class="secondary" type="button" id="csv" disabled>Download CSV</button></form>
    <section><div id="calls"></div><div class="row" id="pager"></div></section>`);
  let records = [];
  let page = 0;
  const size = 20;
  const columns = [["datum", "When"], ["callerid", "From"], ["callednumber", "To"], ["duration", "Seconds"],
                   ["cost", "Cost"], ["disconnectreason", "Ended"]];
  const show = () => {
    const pages = Math.max(1, Math.ceil(records.length / size));
    $("#calls").innerHTML = `<p class="muted">${records.length} calls</p>` + table(records.slice(page * size, page * size + size), columns);
    $("#pager").innerHTML = pages > 1 ? `<button class="secondary" type="button" id="prev" ${page ? "" : "disabled"}>Previous</button>
      <span>Page ${page + 1} of ${pages}</span>
      <button class="secondary" type="button" id="next" ${page + 1 < pages ? "" : "disabled"}>Next</button>` : "";
    if (pages > 1) {
      $("#prev").addEventListener("click", () => { page -= 1; show(); });
      $("#next").addEventListener("click", () => { page += 1; show(); });
    }
    $("#csv").disabled = !records.length;
  };
  $("#csv").addEventListener("click", () => {
    // Quoted, and cells a spreadsheet would run as a formula made text.
    const quote = (v) => `"${String(v ?? "").replace(/^([=+\-@\t\r])/, "'$1").replace(/"/g, '""')}"`;
    const lines = [columns.map(([key]) => key).join(",")].concat(records.map((r) => columns.map(([key]) => quote(r[key])).join(",")));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
    link.download = "calls.csv";
    link.click();
  });
  onSubmit("#filters", async (v) => {
    const params = { days: v.days, dir: v.dir, type: v.type, maxcount: "1000", fields: "normal" };
    if (v.called.trim()) params.called = v.called.trim();
    records = (await api("cdr", params)).data;
    page = 0;
    show();
  });
  $("#filters").requestSubmit();
};

function tariffPage(fn, title) {
  return () => {
    render(`<form class="card" id="tariffs"><h2>${esc(title)}</h2>
      ${field("prefix", "Destination starts with", { extra: 'inputmode="numeric"' })}
      <button class="primary" type="submit">Show</button></form><section id="rates"></section>
      ${session ? "" : '<p><a href="#login">Log in</a></p>'}`);
    onSubmit("#tariffs", async (v) => {
      const result = await api(fn, v.prefix.trim() ? { prefix: v.prefix.trim() } : {}, { auth: !!session });
      $("#rates").innerHTML = table(result.data, [["prefix", "Prefix"], ["name", "Destination"], ["price", "Per minute"],
        ["connectfee", "Connect fee"], ["currency", "Currency"], ["smsprice", "SMS"]]);
    });
    $("#tariffs").requestSubmit();
  };
}
PAGES.tariffs = tariffPage("tariffs", "My tariffs");
PAGES.publictariffs = tariffPage("publictariffs", "Our tariffs");

function simpleForm(page, title, fields, fn, done) {
  PAGES[page] = () => {
    render(`<form class="card" id="form-${page}"><h2>${esc(title)}</h2>${fields}
      <button class="primary" type="submit">${esc(title)}</button><p id="result" class="ok" role="status"></p></form>`);
    onSubmit(`#form-${page}`, async (v, form) => {
      const result = await api(fn, v);
      $("#result").textContent = done ? done(result, v) : result.message;
      form.reset();
    });
  };
}

simpleForm("recharge", "Recharge", field("pin", "Recharge PIN", { required: true, extra: 'inputmode="numeric"' }), "charge",
  (r) => `Done. Your balance is now ${r.message.split(",")[0]}.`);
simpleForm("transfer", "Transfer credit", field("username", "To username", { required: true }) +
  field("credit", "Amount", { required: true, extra: 'inputmode="decimal"' }), "transfercredit", (r) => `Done: ${r.message}.`);
simpleForm("sms", "Send SMS", field("bnum", "To (number or username)", { required: true, extra: 'inputmode="tel"' }) +
  `<label for="f-txt">Message</label><textarea id="f-txt" name="txt" rows="4" maxlength="1530" required></textarea>`,
  "sms", (r) => r.message);
simpleForm("password", "Change password",
  field("oldpassword", "Current password", { type: "password", required: true, autocomplete: "current-password" }) +
  field("newpassword", "New password", { type: "password", required: true, autocomplete: "new-password" }),
  "changepwd", (r, v) => {
    startSession(session.username, v.newpassword);  // an auto-login link's md5 no longer matches either
    return "Your password was changed.";
  });

PAGES.calls = () => {
  render(`<form class="card" id="callback"><h2>Call me back</h2>
    ${field("num", "Call me at", { required: true, extra: 'inputmode="tel"' })}
    ${field("bnum", "Then connect me to (optional)", { extra: 'inputmode="tel"' })}
    <button class="primary" type="submit">Call me back</button></form>
    <form class="card" id="p2p"><h2>Phone to phone</h2>
    ${field("anum", "First phone", { required: true, extra: 'inputmode="tel"' })}
    ${field("bnum", "Second phone", { required: true, extra: 'inputmode="tel"' })}
    <button class="primary" type="submit">Connect</button></form>
    <section><h2>My live calls</h2><div id="live"></div></section>`);
  let shown = "";
  const refresh = async () => {
    const result = await api("calls");
    const state = JSON.stringify(result.data);
    if (state === shown) return;  // unchanged: keep the focus where it is
    shown = state;
    $("#live").innerHTML = result.data.length ? result.data.map((c) => `<p>Call ${esc(c.callid)}: ${esc(c.anum)} &rarr; ${esc(c.bnum)},
      <strong>${esc(c.state)}</strong> <button class="secondary" type="button" data-call="${esc(c.callid)}">Hang up</button></p>`).join("")
      : `<p class="muted">No live calls.</p>`;
    for (const button of document.querySelectorAll("#live button")) {
      button.addEventListener("click", () => busy(async () => { await api("discall", { dbcallid: button.dataset.call }); await refresh(); }, button));
    }
  };
  const place = (fn) => async (v) => {
    const params = Object.fromEntries(Object.entries(v).filter(([, value]) => value.trim()));
    await api(fn, params);
    await refresh();
  };
  onSubmit("#callback", place("callback"));
  onSubmit("#p2p", place("p2p"));
  busy(refresh);
  polling = setInterval(() => refresh().catch(() => {}), 2000);
};

PAGES.forwarding = () => {
  render(`<form class="card" id="forwarding"><h2>Call forwarding</h2>
    ${field("anum", "Always forward to", { extra: 'inputmode="tel"' })}
    ${field("bnum", "When busy, forward to", { extra: 'inputmode="tel"' })}
    ${field("cnum", "When not answered, forward to", { extra: 'inputmode="tel"' })}
    <p class="muted">An empty number turns that forwarding off.</p>
    <button class="primary" type="submit">Save</button><p id="result" class="ok" role="status"></p></form>`);
  busy(async () => {
    const details = (await api("getdetails", { mode: "normal" })).data[0] || {};
    $("#f-anum").value = details.forwardalways || "";
    $("#f-bnum").value = details.forwardonbusy || "";
    $("#f-cnum").value = details.forwardonnoanswer || "";
  });
  onSubmit("#forwarding", async (v) => {
    await api("callforward", { anum: v.anum.trim(), bnum: v.bnum.trim(), cnum: v.cnum.trim() });
    $("#result").textContent = "Saved.";
  });
};

PAGES.details = () => {
  render(`<section><h2>My details</h2><div id="details">&hellip;</div></section>
    <form class="card" id="edit"><h2>Complete my details</h2>
    <p class="muted">Name, e-mail, phone and address can be set once; ask us to change them later.</p>
    <div id="editable"></div><button class="primary" type="submit">Save</button>
    <p id="result" class="ok" role="status"></p></form>`);
  const labels = { username: "Username", name: "Name", email: "E-mail", phone: "Phone", address: "Address",
                   country: "Country", currency: "Currency", credit: "Balance" };
  const load = async () => {
    const details = (await api("getdetails", { mode: "normal" })).data[0] || {};
    $("#details").innerHTML = `<dl>${Object.entries(labels).map(([key, label]) => `<dt>${esc(label)}</dt><dd>${esc(details[key] || "-")}</dd>`).join("")}</dl>`;
    const empty = ["name", "email", "phone", "address", "country"].filter((key) => !details[key]);
    $("#editable").innerHTML = empty.length ? empty.map((key) => field(key, labels[key])).join("") : `<p class="muted">Everything is filled in.</p>`;
    $("#edit button").hidden = !empty.length;
  };
  busy(load);
  onSubmit("#edit", async (v) => {
    for (const [name, value] of Object.entries(v)) {
      if (value.trim()) await api("setfield", { fieldname: name, fieldvalue: value.trim() });
    }
    await load();
    $("#result").textContent = "Saved.";
  });
};

// -- start ---------------------------------------------------------------------------------------

async function deepLink() {
  const query = new URLSearchParams(location.search);
  const fn = (query.get("function") || "").toLowerCase();
  const username = query.get("username");
  if (!fn && !username) return;
  history.replaceState(null, "", location.pathname);  // credentials leave the address bar at once
  const page = OLD_PAGES[fn] || "dashboard";
  if (username && session && session.username !== username &&
      !confirm(`This link logs you in as ${username} instead of ${session.username}. Continue?`)) {
    history.replaceState(null, "", location.pathname + "#" + page);
    return;
  }
  if (username && query.get("password")) {
    await busy(() => login(username, query.get("password")));
  } else if (username && query.get("md5")) {
    session = { username, portalmd5: query.get("md5"), portalsalt: query.get("salt") || "" };
    sessionStorage.setItem(STORE, JSON.stringify(session));
    const ok = await busy(() => api("login"));
    if (ok === undefined) endSession();
  }
  const target = session || ["signup", "publictariffs"].includes(page) ? page : "login";
  history.replaceState(null, "", location.pathname + "#" + target);  // no hashchange: a login error stays shown
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#logout").addEventListener("click", () => { endSession(); go("login"); });
  $(".skip").addEventListener("click", (event) => { event.preventDefault(); $("#page").focus(); });
  window.addEventListener("hashchange", () => route());
  await deepLink();
  route(true);
});
