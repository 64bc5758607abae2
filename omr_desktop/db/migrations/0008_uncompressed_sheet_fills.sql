-- Store each sheet's fills without compression, as the answer history's
-- arrays already are (migration 0007).
--
-- A reprocess stages every sheet's fills (850 floats, 3.4 kB on a demo
-- sheet) and writes them to sheets, and to sheet_history when they change.
-- With the default storage PostgreSQL compressed them once on the way in,
-- which cost the server 0.19 ms a staged sheet during Processing Sheets, or,
-- with only the staging table uncompressed, 0.12 ms a changed sheet inside
-- the Loading to Database step. For 300 demo sheets whose fills changed
-- (embedded PostgreSQL 16, a 2-core VM): staging plus the history and sheets
-- updates took 70 ms compressed everywhere and 41 ms uncompressed.
--
-- The price is space: a demo sheet's fills take 3.4 kB instead of about
-- 1 kB compressed, 24 MB instead of 7 MB for a batch of 7,109 sheets.
-- Values already stored stay compressed until they are rewritten.
ALTER TABLE sheets ALTER COLUMN fills SET STORAGE EXTERNAL;
ALTER TABLE sheet_history ALTER COLUMN fills SET STORAGE EXTERNAL;
