-- 003: the classes a sensor's AudioSet-score veto scaled down in the window (event `vetoed`). NULL when the event has
-- no `vetoed` (a bundle without a veto, or a sensor from before the field); {} when the veto did not act. It tells a
-- low score under a loud sound from a deaf model, so the fleet keeps it beside the scores.
ALTER TABLE events ADD COLUMN vetoed text[];
