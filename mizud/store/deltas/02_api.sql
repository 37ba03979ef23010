-- 02: API login nonces, their used authmd5 values (replay protection), and bans.

CREATE TABLE tb_nonces (
    id :autoid:,
    nonce TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    address TEXT NOT NULL,
    created :timestamp: NOT NULL,
    expires :timestamp: NOT NULL
);
CREATE INDEX tb_nonces_prefix ON tb_nonces (prefix);
CREATE INDEX tb_nonces_expires ON tb_nonces (expires);

CREATE TABLE tb_nonceuse (
    id :autoid:,
    nonceid :bigint: NOT NULL,
    authmd5 TEXT NOT NULL,
    created :timestamp: NOT NULL,
    UNIQUE (nonceid, authmd5)
);

CREATE TABLE tb_banned (
    id :autoid:,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL,
    until :timestamp: NOT NULL
);
CREATE INDEX tb_banned_value ON tb_banned (kind, value, until);
