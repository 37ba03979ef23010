-- 11: several nodes on one database: each node's heartbeat, and which node opened each hold.
CREATE TABLE tb_nodes (
    name TEXT PRIMARY KEY,
    started :timestamp: NOT NULL,
    seen :timestamp: NOT NULL
);
ALTER TABLE tb_holds ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX tb_holds_node ON tb_holds (node, status);
