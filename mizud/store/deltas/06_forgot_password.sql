-- 06: the question and answer behind forgotpasswordquestion / forgotpasswordanswer.
ALTER TABLE tb_users ADD COLUMN forgotquestion TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_users ADD COLUMN forgotanswer TEXT NOT NULL DEFAULT '';
