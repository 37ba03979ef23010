-- 13: the security review (issue 15).
-- API nonces are stateless (an HMAC under a key every node shares); only their uses are kept.
DROP TABLE tb_nonceuse;
DROP TABLE tb_nonces;
CREATE TABLE tb_nonceuse (
    id :autoid:,
    nonce TEXT NOT NULL,
    authmd5 TEXT NOT NULL,
    expires :timestamp: NOT NULL,
    UNIQUE (nonce, authmd5)
);
CREATE INDEX tb_nonceuse_expires ON tb_nonceuse (expires);
CREATE TABLE tb_serverkeys (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created :timestamp: NOT NULL
);
-- Failed logins name the account they were for (so an address is banned only after failures for several)
-- and the address they came from (so an owner's login clears only the failures from its own address).
ALTER TABLE tb_authfailures ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_authfailures ADD COLUMN address TEXT NOT NULL DEFAULT '';
CREATE INDEX tb_authfailures_at ON tb_authfailures (at);
-- Numbers users add (cli, addcallbacknumber) are theirs only once proven: each user's claim is a row,
-- and a number has at most one proven owner.  Numbers added before this version count as proven.
CREATE TABLE tb_usernumbers_new (
    id :autoid:,
    userid :bigint: NOT NULL REFERENCES tb_users (id),
    kind TEXT NOT NULL,
    number TEXT NOT NULL,
    created :timestamp: NOT NULL,
    verified :timestamp:,
    proof TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL DEFAULT '',
    codeexpires :timestamp:,
    attempts INTEGER NOT NULL DEFAULT 0,
    codes INTEGER NOT NULL DEFAULT 0,
    codessince :timestamp:
);
INSERT INTO tb_usernumbers_new (userid, kind, number, created, verified, proof)
    SELECT userid, kind, number, created, created, 'before proof was required' FROM tb_usernumbers ORDER BY id;
DROP TABLE tb_usernumbers;
ALTER TABLE tb_usernumbers_new RENAME TO tb_usernumbers;
CREATE UNIQUE INDEX tb_usernumbers_owner ON tb_usernumbers (kind, number) WHERE verified IS NOT NULL;
CREATE UNIQUE INDEX tb_usernumbers_claim ON tb_usernumbers (userid, kind, number);
CREATE INDEX tb_usernumbers_number ON tb_usernumbers (number);
