"""Every function the Mizu specs name, with its parameters and category.

Functions with a handler replace their entry here when their module
registers them.  The rest answer C{ERROR: not supported: REASON}: either
not yet implemented (the area of work that brings them is named) or never
(the reason is given).
"""

from __future__ import annotations

from .registry import DEFAULT_ACCESS, ApiFunction, Category, Registry

P, U, A, S = Category.PUBLIC, Category.USER, Category.ADMIN, Category.SENSITIVE

BILLING = "not implemented yet (user, billing and admin functions)"
SIP = "not implemented yet (SIP registrar, presence and messaging)"
CALLS = "not implemented yet (calls, routing, SMS and e-mail)"
WINDOWS = "specific to the Windows Mizu server's services"
H323 = "H.323 is not part of mizud"
MSSQL = "specific to Mizu's MS SQL Server deployment; use PostgreSQL's own tools"
OS = "changes the operating system, which an API must not do"
SHELL = "no shell access from the API"
FILES = "no file system access from the API"
GSM = "specific to Mizu's VoIP-GSM gateways"
TUNNEL = "Mizu's proprietary tunnelling is not part of mizud"
PREDICTIVE = "Mizu's predictive dialer and call centre are not part of mizud"
MEDIA = "mizud does not handle media (call control only)"
INTERNAL = "refers to internals of the Mizu server that mizud does not have"

# name | category | parameters | reason it is not supported | summary
_TABLE = [
    ("apitest", P, "", "", "API test"),
    ("apitest1", P, "", "", "API test without any authentication"),
    ("preauth", P, "", "", "start a nonce login: returns a new nonce"),
    ("login", U, "", "", "log in (checks the credentials, returns the user id)"),
    ("newuseru", P, "u_username,u_password,u_name,u_email,u_phone,u_currency,u_country,u_address", BILLING, "public signup"),
    ("balance", U, "", BILLING, "credit request"),
    ("callrating", U, "username,callid", CALLS, "rating of an ongoing call"),
    ("rating", U, "bnum", BILLING, "rate request"),
    ("status", P, "", SIP, "own online status"),
    ("verifyuser", U, "userusername", SIP, "online status of a user"),
    ("presence_get", U, "userusername,ptype,domain", SIP, "presence of users"),
    ("presence_set", U, "pstatus,ptype", SIP, "set presence status"),
    ("sendim", U, "bnum,txt", SIP, "send a chat message"),
    ("getconfroom", U, "", MEDIA, "get or create a conference room"),
    ("callback", U, "num", CALLS, "initiate a callback call"),
    ("p2p", U, "bnum,cnum,waitfor", CALLS, "phone to phone call"),
    ("sendfax", U, "from,to,filename", MEDIA, "send a fax"),
    ("sendmail", U, "from,to,subject,message", CALLS, "send an e-mail"),
    ("sms", U, "anum,bnum,txt", CALLS, "send an SMS"),
    ("sendsms", U, "anum,bnum,txt", CALLS, "send an SMS asynchronously"),
    ("sendsmssync", U, "anum,bnum,txt", CALLS, "send an SMS and wait for delivery"),
    ("sendsmsunicode", U, "anum,bnum,txt", CALLS, "send a Unicode SMS asynchronously"),
    ("sendsmsunicodesync", U, "anum,bnum,txt", CALLS, "send a Unicode SMS and wait"),
    ("cli", U, "anum", BILLING, "add a PIN-less caller number"),
    ("charge", U, "pin", BILLING, "recharge with a PIN"),
    ("cccharge", U, "cardnum,expireyear,expmonth,ccv2,ammount", "card payments need a payment provider; mizud has none", "credit card recharge"),
    ("transfercredit", U, "username,credit", BILLING, "send credit to another user"),
    ("lockphonenumbers", U, "", BILLING, "reserve a phone number"),
    ("getphonenumbers", U, "", BILLING, "a phone number from the free pool"),
    ("search", U, "", BILLING, "user search"),
    ("callbackaccessnumber", U, "", BILLING, "the callback access number"),
    ("addcallbacknumber", U, "anum", BILLING, "add a callback number"),
    ("changepwd", U, "newpassword,oldpassword", BILLING, "change password"),
    ("forgotpasswordquestion", P, "email", BILLING, "password reminder question"),
    ("forgotpasswordanswer", P, "email,forgotpasswordanswer", BILLING, "password reminder answer"),
    ("addcredit", S, "pin,credit", BILLING, "add credit (trusted sources)"),
    ("callforward", U, "anum,bnum,cnum", BILLING, "call forwarding settings"),
    ("sendccinfo", U, "", "card payments need a payment provider; mizud has none", "send credit card details"),
    ("voicerecdownload", U, "cdrid,callid,userid,parentuserid,maxrecords,days,format,fromdt,todt,caller,called", MEDIA, "download recorded voice"),
    ("getdetails", U, "mode", BILLING, "account details"),
    ("setfield", U, "fieldtype,fieldname,fieldvalue,rowid,sync", BILLING, "update a field"),
    ("getfield", A, "table,retfieldname,filterfieldtype,filterfieldname,filterfieldvalue", BILLING, "read a field"),
    ("cdr", U, "caller,called,maxcount,days,dir,type,prefix,fields,summary,by,order", BILLING, "call detail records"),
    ("version", A, "", "", "software version"),
    ("heartbeat", A, "mode", "", "server heartbeat"),
    ("info", A, "", "", "server status and important parameters"),
    ("regstat", A, "", SIP, "registrar statistics"),
    ("reguser", A, "usr", SIP, "registered users and devices"),
    ("fastregusers", A, "succ", INTERNAL, "fastreg module users"),
    ("endpoints", A, "", SIP, "SIP endpoints"),
    ("epreg", A, "regtype,regstate", SIP, "registrar endpoints"),
    ("routingtest", A, "ip,caller,called", CALLS, "the route a call would take"),
    ("gencdr", A, "", INTERNAL, "generate CDRs"),
    ("deviceid", A, "", "Mizu's licence device id; mizud needs no licence", "device id"),
    ("fastusers", A, "", "", "cached users"),
    ("quickstat", A, "", "", "quick statistics"),
    ("locks", A, "", "", "pending locks"),
    ("threadlist", A, "", "", "thread list"),
    ("threads", A, "", "", "thread list"),
    ("threads2", A, "", "", "thread list"),
    ("querylist", A, "", "", "running database queries"),
    ("fs", A, "", "the internal PBX is not part of mizud", "internal PBX"),
    ("lists", A, "", "Mizu's internal lists of its Windows server; mizud's state is in the database (listusers, endpoints)", "lists"),
    ("shortinfo", A, "", "Mizu's internal server summary; quickstat and regstat give mizud's", "short info"),
    ("tunnelinfo", A, "", TUNNEL, "tunnel info"),
    ("tunnelinfoex", A, "", TUNNEL, "tunnel info"),
    ("tunnellist", A, "", TUNNEL, "tunnel list"),
    ("call", A, "", INTERNAL, "simulated calls between GSM SIMs"),
    ("showlog", A, "log,lines", "", "show a log file"),
    ("log", A, "", "", "log"),
    ("file", A, "filename", FILES, "send a file"),
    ("logsearch", A, "txt", "", "search the log"),
    ("reports", A, "", "Mizu's report engine is not part of mizud; dailyreport mails a summary, cdr lists the records", "reports"),
    ("showcfg", A, "", "the configuration is shown by the console's info; config files stay private", "show config files"),
    ("newuseri", S, "u_username,u_password,u_name,u_email,u_phone,u_currency,u_country,u_address", BILLING, "add a user (trusted sources)"),
    ("addserver", A, "u_type,u_name,u_username,u_password,u_domain,u_ip,u_port,u_proxy,u_transport,u_auth,u_email,u_country,u_currency,u_credit,u_routing,u_routingpriority", CALLS, "add a SIP server or traffic sender"),
    ("deluser", A, "u_id,u_username", BILLING, "delete a user"),
    ("listusers", A, "u_type,u_maxcount,u_extended,u_order", BILLING, "list users"),
    ("cmd", A, "txt", SHELL, "run a shell command"),
    ("asendemail", A, "from,to,subject,message", CALLS, "send an e-mail"),
    ("smsreceive", A, "", CALLS, "inbound SMS"),
    ("asendsms", A, "anum,bnum,txt", CALLS, "send an SMS asynchronously"),
    ("asendsmssync", A, "anum,bnum,txt", CALLS, "send an SMS and wait"),
    ("sendamsg", A, "agentid,txt", PREDICTIVE, "message to call centre agents"),
    ("voicehere", A, "dbcallid", MEDIA, "live call listening"),
    ("voicehere2", A, "username", MEDIA, "live call listening"),
    ("bannedlist", A, "", "", "banned addresses and users"),
    ("delbanned", A, "ip", "", "remove a ban (an address, a user, or all)"),
    ("unreg", A, "username,ip,mode", SIP, "unregister a user"),
    ("discall", A, "dbcallid", CALLS, "disconnect a call"),
    ("gk", A, "", H323, "H.323 gatekeeper"),
    ("client", A, "", "Mizu's switch client link is not part of mizud", "switch client"),
    ("db", A, "txt", BILLING, "database query (admins)"),
    ("setip", A, "cardname,ip,mask,gateway,gwmetric", OS, "set the IP address"),
    ("tbackup", A, "", MSSQL, "database backup to the second server"),
    ("timezoneset", A, "", OS, "set the time zone"),
    ("putfile", A, "filename,filedata", FILES, "save a file"),
    ("getfile", A, "filename", FILES, "load a file"),
    ("reload", A, "", "", "reload the configuration"),
    ("vsiprst", A, "", "mizud has no SIP-H.323 router (H.323 is not part of mizud); sipreset binds the SIP listeners again", "restart the SIP-H.323 router"),
    ("sipreset", A, "", SIP, "reset the SIP stack"),
    ("mantreset", A, "", WINDOWS, "restart the maintenance thread"),
    ("ftpst", A, "", WINDOWS, "FTP service"),
    ("webrst", A, "", "the web listeners are mizud's own: restart what=service restarts them with the rest", "restart the web service"),
    ("resetp", A, "", WINDOWS, "reset"),
    ("dbreset", A, "", INTERNAL, "reset database connections"),
    ("restart", A, "what", OS, "restart the service, server or database"),
    ("gwrst", A, "", GSM, "restart gateways"),
    ("dbrsttgs", A, "", "Mizu's database trigger reset; mizud's triggers need none (dbreset replaces the connections)", "reset"),
    ("apireload", A, "", "", "reload tb_api access rules"),
    ("rulesreload", A, "", BILLING, "reload tariffs and rules"),
    ("reloaddialplan", A, "", BILLING, "reload the dial plan"),
    ("reloadapikeys", A, "", INTERNAL, "reload API keys"),
    ("reloadnumdircache", A, "", "mizud keeps no number directory cache: numbers are read from the database", "reload the number directory cache"),
    ("logrename", A, "", "log rotation is left to logrotate (copytruncate) or journald", "rotate the log"),
    ("rebill", A, "", BILLING, "rebill CDRs"),
    ("reindexncache", A, "", PREDICTIVE, "reindex the campaign cache"),
    ("calcnccache", A, "", PREDICTIVE, "recalculate the campaign cache"),
    ("clearnccache", A, "operatorid", PREDICTIVE, "clear the campaign cache"),
    ("upgradeall", A, "", "upgrade through your package manager", "self-upgrade clients"),
    ("dbbackup", A, "reserved,path,ival,type", MSSQL, "database backup"),
    ("dbrestore", A, "reserved,path", MSSQL, "database restore"),
    ("dbfailover", A, "reserved,forcedbnum,checkonly,withrestore,needrestart", MSSQL, "database failover"),
    ("help", P, "name", "", "list the functions"),
    ("keepalive", P, "", "", "keep the connection alive"),
    ("close", P, "", "a connection is closed by its client; on the admin console close (exit, quit) ends the session", "close the connection"),
    ("predectivet", A, "", PREDICTIVE, "predictive dialer thread"),
    ("syncmedia", A, "", MEDIA, "synchronise media files"),
    ("stopscanner", A, "", GSM, "stop number scanners"),
    ("checkscanner", A, "", GSM, "check number scanners"),
    ("backupdb", A, "", MSSQL, "database backup"),
    ("backup", A, "", MSSQL, "backup to the second server"),
    ("finetune", A, "", "mizud has no self-tuning; its options are set in the configuration (etc/mizud.ini lists them)", "fine-tune the service"),
    ("normalizechk", A, "called,caller,country", BILLING, "check number normalisation"),
    ("syncusers", A, "", "", "synchronise the fast users list"),
    ("delobj", A, "", "mizud has no pool of internal objects to free (Python frees them)", "free internal objects"),
    ("monthlymaint", A, "", INTERNAL, "monthly maintenance"),
    ("weeklymaint", A, "", INTERNAL, "weekly maintenance"),
    ("dailymaint", A, "", INTERNAL, "daily maintenance"),
    ("hourlymaint", A, "", INTERNAL, "hourly maintenance"),
    ("dailyreport", A, "", INTERNAL, "daily report"),
    ("unittest", A, "", "mizud's self tests are its test suite (bash .ci/run), not a function of the running server", "server self tests"),
    ("savesettings", A, "", FILES, "write settings to file"),
    ("setini", A, "section,key,value,file", FILES, "write an ini file"),
    ("getini", A, "section,key,file", FILES, "read an ini file"),
    ("saveinifiles", A, "", FILES, "write ini files"),
    ("loadinifiles", A, "", FILES, "load ini files"),
    ("toclient", A, "", "Mizu's client services are not part of mizud", "message to a client service"),
    ("towgw", A, "", GSM, "message to a gateway"),
    ("toip", A, "", GSM, "message to SIMs"),
    ("at", A, "", GSM, "AT command to a GSM engine"),
    ("updcdrdir", A, "", "mizud records each CDR's direction when it writes it", "update CDR directions"),
    ("createcdrinfo", A, "", "mizud writes each CDR complete; there is no CDR information to create afterwards", "CDR info"),
    ("setfastregpwd", A, "", "mizud has no fast-registration cache (fastreg); every registration is checked against tb_users", "fastreg password"),
    ("newuserevent", A, "", "Mizu's new-user event hook; mizud runs tb_api custom actions after newuser instead", "new user event"),
    ("newusersevent", A, "", "Mizu's new-user event hook; mizud runs tb_api custom actions after newuser instead", "new users event"),
    ("checkcredits", A, "", BILLING, "check charges"),
    ("checkpins", A, "", BILLING, "recheck PINs"),
    ("capcheck", A, "", GSM, "free capacity check"),
    ("parsegsmcdr", A, "", GSM, "reparse GSM CDRs"),
    ("willstop", A, "", "mizud has no credit-check thread to stop; credit is held per call", "no more credit checks"),
    ("checkmails", A, "", "mizud sends each e-mail when it is asked to and keeps no queue of e-mail jobs to check", "check e-mail jobs"),
    ("pputfile", A, "filename,filedata", FILES, "save a file under mvweb/filestorage"),
    ("pgetfile", A, "filename", FILES, "load a file from mvweb/filestorage"),
    ("wsuser", U, "brandname,companyname,upperserver,upperserverdomain", "Mizu's WebRTC softphone provisioning is not part of mizud", "WebRTC user settings"),
    ("oop", A, "txt", "type the command on the admin console (adminport) instead", "console operation (old interface)"),
]

# Old names that are the same function (spec and the old HTTP interface).
_ALIASES = {"callback": ("cb",), "newuseri": ("newuser", "adduser"), "close": ("exit", "quit")}


def load(registry: Registry) -> None:
    """Register every spec function; handlers registered later replace these entries."""
    for name, category, params, reason, summary in _TABLE:
        registry.add(
            ApiFunction(
                name=name,
                category=category,
                params=tuple(p for p in params.split(",") if p),
                summary=summary,
                access=DEFAULT_ACCESS[category],
                aliases=_ALIASES.get(name, ()),
                unsupported=reason or "not implemented yet",
            )
        )
