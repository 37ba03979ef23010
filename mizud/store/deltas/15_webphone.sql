-- 15: the Mizu webphone and ordinary softphones (issue 16).
-- The domain each phone registered under (requests to it name that domain, not "mizud").
ALTER TABLE tb_registrations ADD COLUMN domain TEXT NOT NULL DEFAULT '';
-- Presence published over SIP (PUBLISH, RFC 3903): its entity tag and when it lapses.
ALTER TABLE tb_presence ADD COLUMN etag TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_presence ADD COLUMN expires :timestamp:;
-- The API sessions of web clients (wsuser): which client, which version, from where.
CREATE TABLE tb_websessions (
    id :autoid:,
    userid :bigint: NOT NULL,
    sessionid TEXT NOT NULL DEFAULT '',
    brandname TEXT NOT NULL DEFAULT '',
    companyname TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL,
    updated :timestamp: NOT NULL,
    UNIQUE (userid, sessionid)
);
CREATE INDEX tb_websessions_updated ON tb_websessions (updated);
