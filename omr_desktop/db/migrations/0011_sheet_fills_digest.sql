-- Give each sheet's fills a digest, so that a reprocess which measures the
-- same fills as before need not send them.
--
-- The built-in profiles share one way of measuring, so reprocessing with
-- another of them measures each sheet's fills exactly as before. The
-- writer still sent them all: 850 floats a demo sheet, 49 MB of COPY data
-- for 7,109 sheets, which took the server 0.2-0.3 s of CPU to parse during
-- Processing Sheets, and then compared them with the stored ones. A
-- detection thread now compares the digest of its fills with the stored
-- one and sends no fills when they match (a 2-core VM, embedded
-- PostgreSQL 16).
--
-- The digest is SHA-256 of the array's binary send form, which is what the
-- writer's binary COPY sends, so Python and the server compute the same
-- bytes. The trigger keeps it true: a row inserted, or updated with new
-- fills but not a new digest (an undo, an operator's UPDATE), gets the
-- digest of its fills computed here. A writer that sets both, as the
-- reprocess does, is trusted. Computing it here costs the server about
-- 35 us a demo sheet, 0.25 s for 7,109.
ALTER TABLE sheets ADD COLUMN fills_digest bytea;

CREATE FUNCTION sheets_fills_digest() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.fills_digest IS NOT DISTINCT FROM OLD.fills_digest THEN
        -- Both functions are strict: no fills, no digest.
        NEW.fills_digest := sha256(array_send(NEW.fills));
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sheets_fills_digest
    BEFORE INSERT OR UPDATE OF fills ON sheets
    FOR EACH ROW EXECUTE FUNCTION sheets_fills_digest();

UPDATE sheets SET fills_digest = sha256(array_send(fills)) WHERE fills IS NOT NULL;
