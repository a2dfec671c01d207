-- Run once by the postgres image, on an empty data volume only
-- (files in /docker-entrypoint-initdb.d/ are skipped when the volume already
-- holds a cluster). POSTGRES_DB creates `booking`; reminders and referrals each
-- get their own database here so every service owns its schema.
CREATE DATABASE reminders;
CREATE DATABASE referrals;
