-- 04: numbers attached to users: PIN-less caller numbers (cli) and callback numbers.
CREATE TABLE tb_usernumbers (
    id :autoid:,
    userid :bigint: NOT NULL REFERENCES tb_users (id),
    kind TEXT NOT NULL,
    number TEXT NOT NULL,
    created :timestamp: NOT NULL,
    UNIQUE (kind, number)
);
CREATE INDEX tb_usernumbers_user ON tb_usernumbers (userid);
