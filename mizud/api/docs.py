"""Generate docs/api.md from the function registry: `python -m mizud.api.docs > docs/api.md`."""

from __future__ import annotations

from .functions import build_registry
from .registry import REQ_ADMINS, REQ_ALL, REQ_PUBLIC, Category

_LEVELS = {REQ_PUBLIC: "public", REQ_ALL: "users", REQ_ADMINS: "admins", 4: "server admin", 8: "owners, resellers", 10: "support", 11: "SIP users"}

HEADER = """\
# API functions

This file is generated from mizud's function registry
(`python -m mizud.api.docs > docs/api.md`); a test keeps it current.

## Entry points

- HTTP GET or POST to any path containing `/mvapireq` on `mainaport`
  (default 80): `/mvapireq/?apientry=FUNCTION&authkey=..&authid=..&authmd5=..`.
- The old interface: `/xmapi/COMMAND?key=..&usr=..&pwd=..|md5auth=..` on
  `httpserver` (default 8084) and on `mainaport`. Only its own commands
  (p2p, sms, cb, balance, rating, addcredit, adduser, charge, cli, db, oop
  and the empty command; anything else is `ERROR: unknown command of the
  old interface`), under the same rules, limits and lockout as
  `/mvapireq`. `key` is `httpapikey`, or `apiv2key` when that is empty;
  where nonce login is demanded, `pwd` and `md5auth` are refused
  (`ERROR: this server requires nonce authentication: use /mvapireq with
  preauth`) unless `legacystaticauth=1`.
- On `mainaport` too: raw TCP lines (`/mvapireq/?...` ended by CR LF, one
  answer line each, pipelining allowed), UDP datagrams (up to 1,490 bytes,
  one answer datagram), WebSocket on `/mvstwebsock` (one text message per
  request), and all of it inside TLS (a ClientHello is detected) and on
  `sslportmain`. Line and datagram answers are one line: records come with
  `format=json` or `xml`. A raw TCP line must be finished within
  `requesttimeout` (30 s) and an idle connection closes after
  `connectionidletimeout` (2 min); one address may hold at most
  `maxconnectionsperip` (100) connections; a connection that owes 64
  answers, or whose peer reads none, is not read until they drain.
- Files of the `mvwebdir` directory under `/mvweb/` (content types,
  conditional GET, no directory listings, nothing outside the directory).
- The enduser web portal at `/webvoip` and `/webvoipportal` (with
  `webportal=1`; off by default): a single page that uses only this API.
  Besides authmd5, every function accepts the old auto-login links'
  proof: `portalsalt` and `portalmd5`, where the link's md5 is
  MD5(`C8y5:` username `:` password `:` portalsalt) and `portalmd5` is
  MD5(that + authsalt2 + serversalt + nonce) with a nonce, or the link's
  md5 itself without one (only where nonces are not required). An
  unknown or expired nonce is answered with a new one, not counted as a
  failed login.
- `/mvapireq/NAME` is the same as `/mvapireq/?apientry=NAME`. `/openapi.json`
  (and docs/openapi.json) describes every function in OpenAPI 3.
  `/metrics` gives Prometheus figures to trusted addresses.
- Inside SIP: with `sipapi=1`, an `X-MizuAPI` header of a MESSAGE or
  OPTIONS from a SIP-authenticated user carries a request (answered in the
  response). Mizu's encrypted tunnelling is not supported: connections
  whose first bytes are not a protocol mizud serves are closed without an
  answer.
- The telnet admin console on `adminport` (off by default; `remoteadmin`
  says from where, default localhost only): after a login as an admin or
  support user, every function is a command, `name value1 value2 ...` in
  the order of the parameters column below, or `name key=value ...`
  (quoted like a shell). Answers are in the text format. `help` lists the
  commands, `help NAME` shows one; `close`, `exit` and `quit` end the
  session. `apitrustfromconsole` decides who the commands run as: 2
  (default) the logged-in user, 1 a trusted address, 0 each command's own
  credentials. showlog, log, logsearch, threadlist, threads, threads2,
  locks and querylist answer only there.

## Requests

Parameters come from the query string and the body: form-urlencoded,
multipart form (no file uploads), a JSON object (scalar values), XML (the
root's child elements), a SOAP envelope (the element inside Body names the
function), ini (`key=value` lines) or plain text (a query string or a
`/mvapireq/?...` line). Names are case-insensitive; values URL-decoded and
UTF-8. Aliases: `phone1`/`from` = `anum`, `phone2`/`to` = `bnum`,
`message` = `txt`, `authsalt` = `authsalt1`. With `apientry`,
`param1..paramN` fill the function's parameters in the order listed below
(`apientry=unreg&param1=alma`). Without `apientry`, the spec's positional
form: `param1` is the function, `param2`..`param4` are `authkey`, `authid`
and `authpwd`, and `param5`.. fill the function's parameters
(`param1=balance&param2=KEY&param3=USER&param4=PWD`). `now` and other
unknown parameters are ignored. XOR+Base64 encryption with
`httpapiencryptkey` (when it is empty, with the key built into Mizu's
clients, `aJ6aqK4Nah3hnP7aht`): `mcrfs=` carries the whole request, an
`oenc1_` prefix marks one encrypted value. Admins may act as another user
with `targetuser`. An inbound SMS from a user's proven number whose text
is `p2p`, `cb`, `balance`, `rating`, `charge` or `cli` with its
parameters runs that function as the user; the answer goes back by SMS.

Limits: 256 parameters, 65,536 characters per value, 8,192 characters of
URL, 1 MiB of body; XML with a DTD or entities is refused.

## Answers

`format=` picks text, cleartext, html, xml, soap, json or jsonp (with
`callback=NAME`; `enablejsonp=0` turns JSONP into JSON); without it a JSON,
XML or SOAP request gets the same format back and anything else text.

| format | success | failure |
|---|---|---|
| text | `OK: message`, then for record lists a tab-separated header line and one line per record | `ERROR: message` |
| cleartext | `message` alone (records as in text) | `ERROR: message` |
| html | a page with the text line in `<p>` and records in a `<table>` | the same |
| json | `{"code":200,"status":"OK","message":"...","data":[{...}]}` (`data` only for record lists; values are strings or null) | `{"code":499,"status":"ERROR","message":"..."}` |
| jsonp | `CALLBACK(json);` | the same |
| xml | `<response><code>200</code><status>OK</status><message/><data><record>...</record></data></response>` | code 499, status ERROR |
| soap | the xml `<response>` inside a SOAP 1.1 `Envelope`/`Body` | the same |

HTTP status: 200 for every answer, unless `httpstrictrtspose` (alias
`httpstrictresponse`) is on; then failures carry 403 (wrong authentication,
access denied, bans, address not allowed, `ERROR: new nonce is:...EOF`), 404
(not found), 406 (unknown, disabled or unsupported function), 412 (failed to
complete), 420 (bad PIN), 421 (missing parameter), 429 (rate limited) or 499
(anything else). 503 while the daemon is still opening its database; a
body over 1 MiB (declared or chunked) gets 413 and the connection is closed
before more of it is read.

## Authentication and access

Per spec: `authkey` = `apiv2key` (not needed from trusted addresses or when
no key is set); `authid` = username, user id or PIN; `authpwd` = password
(or PIN); `authmd5` = `authv3_` + MD5(MD5("tU29m" + authid + authpwd +
authsalt1) + authsalt2 + apiv2md5salt + nonce) or MD5("ck5Gp" + authid +
authpwd + apiv2md5salt + authsalt1). `preauth` answers
`OK: new nonce is:NONCEEOF`; send the first 10 or more characters as
`nonce=`. When `apidefneedlogin` / `tb_api.req_user_login` demand it, a
request without a valid nonce is answered `ERROR: new nonce is:NONCEEOF`;
each authmd5 is accepted once per nonce. Trusted addresses (loopback, the
LAN unless `trustlanip=false`, `trustediplist`; see `allowtrustedip`) are
admins without credentials when `apideftrustadmin` is 1 (default) or 2, and
may name a user by `authid` alone -- but only for requests whose address
is vouched for: never over UDP (anyone can forge a datagram's source;
`apiudptrusted=1` trusts the UDP network), never for a request a browser
makes for a page of another site (`Origin`, `Referer`, `Sec-Fetch-Site`;
a browser showing none of them unless `browseraddresstrust=1`; a browser
addressing a host name other than an IP address, `localhost` or one in
`httphostnames`), and never with `format=jsonp`. Answers carry `Access-Control-Allow-Origin: *`:
pages of any site may call the API with their own credentials. Wrong key,
unknown user and wrong password all answer `ERROR: wrong authentication`.
Failures count per account (the user `authid` resolves to, whichever
spelling names it; a name that resolves to nobody counts on its own):
`authfailmax` failures in `authfailwindow` ban the account for
`authbantime`, and while it is banned every answer about it is `ERROR:
banned: too many failed authentications`, right password or wrong. An
address is banned only when its failures in the window reach
`authfailmax` and name at least `authfailaccounts` accounts; failures over
UDP never ban an address, but `authfailmax` of them stop UDP logins from
that source. A successful login clears only the failures from its own
address; a replayed authmd5 is answered with a new nonce. Only ASCII
digits without a leading zero are a user id.
Rate limits (leaky buckets): `ratelimitglobal`, `ratelimitip`,
`ratelimituser`, and some functions' own (below).

`tb_api` rows override a function's access (`req_key`, `req_ip`, `req_user`,
`req_user_mode`, `req_user_credit`, `req_user_register`, `req_user_login`,
`enabled`) after `apireload`; a row with `customsql` defines a custom
function (or replaces a predefined one), and `custom_action` /
`custom_action_body` run an action after the answer. See
docs/schema.md and docs/decisions.md.

## What each implemented function answers

Money amounts have at least two decimals (`5.00`, `0.0456`); a repeated
client transaction id (`txid=`) adds ` (repeated transaction)`.

| function | answer (text format; records go to `data` in JSON/XML) |
|---|---|
| apitest, apitest1 | `OK: API test passed` (apitest adds who and how: `(alice, authmd5)`) |
| preauth | `OK: new nonce is:NONCEEOF` |
| login | `OK: USERID`, record id, username, type |
| version / heartbeat / keepalive | `OK: mizud 0.1.0` / `OK: alive` (mode=full: `alive, database ok`) / `OK: keepalive` |
| info, quickstat, regstat | a summary line and one record of figures |
| help | `OK: N functions` and a record per function; `help NAME`: one record |
| reload / apireload | `OK: reloaded; changed: ...; need a restart: ...` / `OK: N tb_api rules loaded` |
| bannedlist / delbanned | records kind, value, until, reason / `OK: N bans lifted` |
| balance | `OK: 12.34 USD` |
| rating | `OK: PRICE CURRENCY PREFIX NAME` (price per minute), record prefix, name, price, currency, connectfee, mininterval, interval, plan |
| rulesreload, reloaddialplan | `OK: N tariffs loaded` |
| tariffs, publictariffs | `OK: N tariffs in plan P`, a record per prefix: prefix, name, price, connectfee, mininterval, interval, currency, smsprice; publictariffs without the option: `ERROR: no public tariffs are published (publictariffs=0)` |
| importtariffs | `OK: N tariffs imported into plan P; M tariffs loaded`; a bad file: `ERROR: tariff file refused: line L: ...` |
| charge | `OK: BALANCE CURRENCY, credited AMOUNT` |
| addcredit | `OK: BALANCE CURRENCY, USER credited AMOUNT` (negative: `debited`) |
| transfercredit | `OK: BALANCE CURRENCY, sent AMOUNT to USER` (the sender's balance) |
| newuseri, newuseru | `OK: USERID`, record id, username. No username may be another user's id, a PIN, a DID or another user's proven number (`ERROR: u_username NAME is a number of the pool (DID)`, ...); newuseru refuses phone numbers as usernames (`ERROR: u_username must not be a phone number: numbers are assigned by the operator`) unless `signupnumericusernames=1`, and even then numbers routed to a gateway |
| deluser | `OK: deleted USERNAME` (refused while the balance is not zero) |
| listusers, search | `OK: N users`, a record per user |
| getdetails | `OK: USERNAME`, one record (min: id, username, credit, currency; normal: contact and account fields; max: every column but the password) |
| changepwd | `OK: password changed` |
| forgotpasswordquestion / forgotpasswordanswer | `OK: QUESTION` / `OK: a new password was sent by e-mail` |
| setfield / getfield | `OK: FIELD set` / `OK: VALUE` |
| cli, addcallbacknumber | without `code`: `OK: a code was sent to NUMBER by SMS: add it with code=CODE within 15 minutes` (the SMS is paid like any other); with the code: `OK: NUMBER added`; from an admin (with `targetuser`): `OK: NUMBER added (approved by an admin)`; `already added` when it is the caller's; `ERROR: NUMBER belongs to another user`, `ERROR: wrong code` (5 per code) |
| jppget | the remote JSON document as `CALLBACK(json);` (`application/javascript`), or `ERROR: ...` why it was refused |
| callbackaccessnumber | `OK: NUMBER` |
| callforward | `OK: forwardalways=..., ...` (`-` for a cleared field) |
| getphonenumbers / lockphonenumbers | `OK: COUNT` of free numbers / `OK: NUMBER` reserved for an hour |
| cdr | `OK: N calls` and a record per call (fields=min/normal/all); summary=yes adds `; total N calls, S s, cost C`; by=all/day/caller/called: a record per group with calls, connected, duration, cost (and profit for admins with fields=all) |
| gencdr / rebill | `OK: N CDRs generated for USER` / `OK: N CDRs checked, M repriced` |
| db | `OK: N rows` with the rows, or `OK: N rows affected` |
| showcfg | `OK: N options`, a record per option (secrets shown as `***`) |
| checkcredits | `OK: every balance equals its ledger`, or an error listing the users whose balance differs |
| hourlymaint, dailymaint, weeklymaint, monthlymaint | `OK: nonces N, bans N, numbers N, registrations N, websessions N`; daily and longer add `, optimized 1`, weekly and monthly `, vacuumed 1`, monthly `, messages N, sms N` (deleted by retention) |
| status, verifyuser | `OK: N` (0 no such user, 1 offline, 2 online, 3 calling, 4 speaking) |
| presence_get / presence_set | `OK: puserlist: user1:status1,...` / `OK: presence set`; presence_set appends stored messages as `XOFFMESSAGE:from:text...XOFFMESSAGE:` |
| sendim | `OK: message for N users: S sent to registered devices, T stored` |
| reguser, endpoints, epreg, fastregusers | `OK: N registered users: ...` / `OK: N contacts` / `OK: N endpoints` / `OK: N registrations` / `OK: N users`, a record per contact or device |
| unreg | `OK: unregistered N users: ...` (`USER was not registered`) |
| addserver | `OK: USERID; routing entry NAME prefix 'P' priority N`, record id, username, password |
| routingtest | `OK: N routes: NAME TARGET, ...`, a record per route in the order a call tries them (a user's forwardalways followed, other forwarding named); `ERROR: no route to NUMBER` |
| sendmail / asendemail | `OK: sent to N of M recipients` / `OK: queued for M recipients` |
| sms, sendsmssync, sendsmsunicodesync, asendsmssync | `OK: SMS ID delivered through GATEWAY (cost C)`, `OK: SMS ID sent to the user` / `stored for the user`; `ERROR: SMS ID not delivered: REASONS` |
| sendsms, sendsmsunicode, asendsms | `OK: SMS ID queued (held C)` (or as above for SMS to users) |
| smsreceive | `OK: delivered to USER` / `OK: stored for USER until online`; with `smscommands=true`, a text from a user's proven number that is a command (balance, rating BNUM, charge PIN, cb/callback [NUM], p2p [ANUM] BNUM; never cli) runs as that user: `OK: command F run for USER, answered by SMS: ANSWER` |
| p2p, callback | `OK: call ID placed (max H CUR held)` at once; with waitfor=1 `OK: call ID answered by A (...)`, waitfor=2 `OK: call ID connected (...)`, or `ERROR: call ID failed: WHY`; a record callid, username, kind, anum, bnum, state, duration, connected, maxduration, held, cost, currency, sipcallida, sipcallidb, reason. Refusals hold nothing: `ERROR: not enough credit to call B (C CUR)`, `ERROR: no route to N`, `ERROR: N is not registered`, `ERROR: no tariff for N (leg A/B)`, `ERROR: N is not one of your numbers ...` |
| calls, call | `OK: N calls: ID ANUM->BNUM STATE, ...`, a record per live call: p2p, callback and calls from phones (kind `sip`, with callee and gateway); on other nodes: callid, username, kind, anum, bnum, state, held, node |
| discall | `OK: call ID ended (cost C CUR)` once both legs are down and the call is billed |
| callrating | `OK: credit C CUR, maxduration S, rating R CUR/min` (S: seconds the call may still last; R: both legs' price per minute, or a phone's call's price per minute); without callid, the user's own live call |
| showlog, log / logsearch | `OK: N lines of the main log` (or sip: SIP events only) and the lines / `OK: N lines` containing the text (latest 200) |
| threadlist, threads, threads2 | `OK: N threads; reactor thread pool: W workers (min, max), I idle, Q queued` and a line per thread |
| querylist | `OK: N transactions in flight` and a line per transaction: its name and seconds |
| locks | SQLite: `OK: SQLite has one writer: N transactions queued for it or running`; PostgreSQL: `OK: N locks waited for` and a line per lock (pid, seconds, mode, relation) |
| a tb_api custom SQL function | `OK: N rows` with the rows, `OK: N rows affected`, or `OK: queued` |

Tariff files for `importtariffs` are CSV with a header line naming the
columns `prefix,name,price,connectfee,mininterval,interval,currency`
(`prefix` and `price` required; price per minute; defaults: no name, no
connect fee, no minimum, 1-second increments, `defaultcurrency`). Any
invalid row rejects the whole file with its line number.

## Functions

"Access" is who may call the function by default (a `tb_api` row may
change it). "not supported" functions answer `ERROR: not supported: REASON`.

| function | aliases | category | parameters | access | status | what it does |
|---|---|---|---|---|---|---|
"""


def render() -> str:
    """The whole of docs/api.md."""
    registry = build_registry()
    rows = []
    for function in registry:
        level = function.access.req_user or (REQ_ADMINS if function.category in (Category.ADMIN, Category.SENSITIVE) else REQ_ALL)
        access = _LEVELS.get(level, str(level))
        if function.access.req_ip:
            access += ", listed address"
        if not function.access.req_key:
            access += ", no key"
        if function.rate:
            access += f", {function.rate:g}/s per address"
        rows.append(
            f"| {function.name} | {', '.join(function.aliases)} | {function.category.value} | "
            f"{', '.join(function.params)} | {access} | {function.status} | {function.summary} |"
        )
    implemented = sum(1 for f in registry if f.implemented)
    footer = f"\n{len(rows)} functions, {implemented} implemented.\n"
    return HEADER + "\n".join(rows) + "\n" + footer


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(render())
