-- 01: users, API access rules, CDRs, tariffs, recharge PINs, phone number pool,
-- the credit ledger, idempotent money operations and fund holds.
-- Type tokens (:autoid:, :money:, :timestamp:, :bigint:) are expanded per engine.

CREATE TABLE tb_users (
    id :autoid:,
    type INTEGER NOT NULL DEFAULT 0,
    username TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    phone TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    country TEXT NOT NULL DEFAULT '',
    currency TEXT NOT NULL DEFAULT 'USD',
    credit :money: NOT NULL DEFAULT 0,
    postpaid INTEGER NOT NULL DEFAULT 0,
    creditlimit :money: NOT NULL DEFAULT 0,
    tariffid INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    temporarydisabled INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    statusdate :timestamp:,
    pin TEXT UNIQUE,
    parentid :bigint: NOT NULL DEFAULT 0,
    created :timestamp: NOT NULL,
    deviceid TEXT NOT NULL DEFAULT '',
    -- fields a user may always change with setfield
    forwardonbusy TEXT NOT NULL DEFAULT '',
    forwardonnoanswer TEXT NOT NULL DEFAULT '',
    forwardalways TEXT NOT NULL DEFAULT '',
    voicemail INTEGER NOT NULL DEFAULT 0,
    musiconhold INTEGER NOT NULL DEFAULT 0,
    displayname TEXT NOT NULL DEFAULT '',
    noanswertimeout INTEGER NOT NULL DEFAULT 0,
    forwardearlystart INTEGER NOT NULL DEFAULT 0,
    changesptoring INTEGER NOT NULL DEFAULT 0,
    convertdtmf INTEGER NOT NULL DEFAULT 0,
    playadvice INTEGER NOT NULL DEFAULT 0,
    playdisc INTEGER NOT NULL DEFAULT 0,
    sendsmsalert INTEGER NOT NULL DEFAULT 0,
    sendemailalert INTEGER NOT NULL DEFAULT 0,
    sendsmsreport INTEGER NOT NULL DEFAULT 0,
    senddailyemail INTEGER NOT NULL DEFAULT 0,
    sendlowcreditemail INTEGER NOT NULL DEFAULT 0,
    sendmonthlyemail INTEGER NOT NULL DEFAULT 0,
    sendotheremail INTEGER NOT NULL DEFAULT 0,
    notifymissedsms INTEGER NOT NULL DEFAULT 0,
    notifymissedemail INTEGER NOT NULL DEFAULT 0,
    choosecodecs TEXT NOT NULL DEFAULT '',
    needcodeconversion INTEGER NOT NULL DEFAULT 0,
    discvoice TEXT NOT NULL DEFAULT '',
    connectvoice TEXT NOT NULL DEFAULT '',
    voicemailonbusy INTEGER NOT NULL DEFAULT 0,
    voicemailonnoansw INTEGER NOT NULL DEFAULT 0,
    voicemailalways INTEGER NOT NULL DEFAULT 0,
    -- fields a user may set with setfield only while they are still empty
    contactname TEXT NOT NULL DEFAULT '',
    email2 TEXT NOT NULL DEFAULT '',
    fax TEXT NOT NULL DEFAULT '',
    billaddress TEXT NOT NULL DEFAULT '',
    postaddress TEXT NOT NULL DEFAULT '',
    regnumber TEXT NOT NULL DEFAULT '',
    euregnumber TEXT NOT NULL DEFAULT '',
    birthday TEXT NOT NULL DEFAULT '',
    gender TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    utc TEXT NOT NULL DEFAULT ''
);
CREATE INDEX tb_users_phone ON tb_users (phone);
CREATE INDEX tb_users_parentid ON tb_users (parentid);

CREATE TABLE tb_api (
    id :autoid:,
    fname TEXT NOT NULL UNIQUE,
    req_key INTEGER NOT NULL DEFAULT 1,
    req_ip INTEGER NOT NULL DEFAULT 0,
    req_user INTEGER NOT NULL DEFAULT 0,
    req_user_mode INTEGER NOT NULL DEFAULT 0,
    req_user_credit :money: NOT NULL DEFAULT 0,
    req_user_register INTEGER,
    req_user_login INTEGER,
    customsql TEXT NOT NULL DEFAULT '',
    custom_action INTEGER NOT NULL DEFAULT 0,
    custom_action_body TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE tb_cdrs (
    id :autoid:,
    datum :timestamp: NOT NULL,
    callerid TEXT NOT NULL DEFAULT '',
    callednumber TEXT NOT NULL DEFAULT '',
    userid :bigint: NOT NULL DEFAULT 0,
    duration INTEGER NOT NULL DEFAULT 0,
    cost :money: NOT NULL DEFAULT 0,
    sipcallid TEXT NOT NULL DEFAULT '',
    disconnectreason TEXT NOT NULL DEFAULT '',
    direction TEXT NOT NULL DEFAULT 'out',
    gateway TEXT NOT NULL DEFAULT ''
);
CREATE INDEX tb_cdrs_user_datum ON tb_cdrs (userid, datum);
CREATE INDEX tb_cdrs_datum ON tb_cdrs (datum);
CREATE INDEX tb_cdrs_sipcallid ON tb_cdrs (sipcallid);

CREATE TABLE tb_tariffs (
    id :autoid:,
    tariffid INTEGER NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    price :money: NOT NULL,
    connectfee :money: NOT NULL DEFAULT 0,
    mininterval INTEGER NOT NULL DEFAULT 0,
    interval INTEGER NOT NULL DEFAULT 1,
    currency TEXT NOT NULL DEFAULT 'USD',
    UNIQUE (tariffid, prefix)
);

CREATE TABLE tb_pins (
    id :autoid:,
    pin TEXT NOT NULL UNIQUE,
    credit :money: NOT NULL,
    currency TEXT NOT NULL DEFAULT 'USD',
    used INTEGER NOT NULL DEFAULT 0,
    usedby :bigint:,
    useddate :timestamp:,
    created :timestamp: NOT NULL
);

CREATE TABLE tb_phonenumbers (
    id :autoid:,
    number TEXT NOT NULL UNIQUE,
    userid :bigint: NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    lockeduntil :timestamp:,
    created :timestamp: NOT NULL
);
CREATE INDEX tb_phonenumbers_free ON tb_phonenumbers (status, userid);

CREATE TABLE tb_credits (
    id :autoid:,
    userid :bigint: NOT NULL REFERENCES tb_users (id),
    amount :money: NOT NULL,
    balance :money: NOT NULL,
    kind TEXT NOT NULL,
    reference TEXT NOT NULL DEFAULT '',
    txid TEXT,
    comment TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL
);
CREATE INDEX tb_credits_user ON tb_credits (userid, id);

CREATE TABLE tb_moneyops (
    id :autoid:,
    userid :bigint: NOT NULL,
    txid TEXT NOT NULL,
    op TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL,
    UNIQUE (userid, txid)
);

CREATE TABLE tb_holds (
    id :autoid:,
    userid :bigint: NOT NULL REFERENCES tb_users (id),
    amount :money: NOT NULL,
    cost :money:,
    status INTEGER NOT NULL DEFAULT 0,
    reference TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL,
    closed :timestamp:
);
CREATE INDEX tb_holds_open ON tb_holds (userid, status);
