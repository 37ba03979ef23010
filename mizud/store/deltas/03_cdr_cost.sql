-- 03: what a call cost the operator (the gateway's price), for profit reports.
ALTER TABLE tb_cdrs ADD COLUMN gatewaycost :money: NOT NULL DEFAULT 0;
