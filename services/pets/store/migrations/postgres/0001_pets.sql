-- Pets, keyed by a hash of (source, source_id). Times are unix
-- microseconds (UTC) so that both stores compare and page identically.
-- *_key columns are the lowercased filter values (lowercased in Go, so
-- matching is Unicode-aware); search_text is the lowercased name and
-- description for the free-text filter. doc is the pet's JSON as the API
-- returns it, so that reads need neither scanning every column nor
-- encoding. name uses the "C" collation so
-- that the name order is bytewise, as in SQLite.
CREATE TABLE pets (
  id                  TEXT    NOT NULL PRIMARY KEY,
  source              TEXT    NOT NULL,
  source_id           TEXT    NOT NULL,
  name                TEXT    COLLATE "C" NOT NULL,
  species             TEXT    NOT NULL,
  breed_primary       TEXT    NOT NULL DEFAULT '',
  breed_secondary     TEXT    NOT NULL DEFAULT '',
  breed_mixed         BOOLEAN NOT NULL DEFAULT false,
  age                 TEXT    NOT NULL,
  gender              TEXT    NOT NULL,
  size                TEXT    NOT NULL,
  color_primary       TEXT    NOT NULL DEFAULT '',
  color_secondary     TEXT    NOT NULL DEFAULT '',
  color_tertiary      TEXT    NOT NULL DEFAULT '',
  status              TEXT    NOT NULL,
  description         TEXT    NOT NULL DEFAULT '',
  photos              TEXT    NOT NULL DEFAULT '[]',
  organization_id     TEXT    NOT NULL DEFAULT '',
  city                TEXT    NOT NULL DEFAULT '',
  state               TEXT    NOT NULL DEFAULT '',
  postcode            TEXT    NOT NULL DEFAULT '',
  country             TEXT    NOT NULL DEFAULT '',
  published_at        BIGINT  NOT NULL,
  updated_at          BIGINT  NOT NULL,
  species_key         TEXT    NOT NULL,
  breed_primary_key   TEXT    NOT NULL DEFAULT '',
  breed_secondary_key TEXT    NOT NULL DEFAULT '',
  city_key            TEXT    NOT NULL DEFAULT '',
  state_key           TEXT    NOT NULL DEFAULT '',
  search_text         TEXT    NOT NULL DEFAULT '',
  doc                 TEXT    NOT NULL,
  content_hash        TEXT    NOT NULL,
  version             BIGINT  NOT NULL DEFAULT 1,
  UNIQUE (source, source_id)
);

-- One index per sort order (key, id) for unfiltered pages.
CREATE INDEX pets_published ON pets (published_at, id);
CREATE INDEX pets_updated   ON pets (updated_at, id);
CREATE INDEX pets_name      ON pets (name, id);
-- The common browse queries: by status and species, newest first.
CREATE INDEX pets_status_species_published ON pets (status, species_key, published_at, id);
CREATE INDEX pets_species_published        ON pets (species_key, published_at, id);
CREATE INDEX pets_status_published         ON pets (status, published_at, id);
-- Selective filters.
CREATE INDEX pets_breed_primary   ON pets (breed_primary_key);
CREATE INDEX pets_breed_secondary ON pets (breed_secondary_key);
CREATE INDEX pets_state_city      ON pets (state_key, city_key);
CREATE INDEX pets_city            ON pets (city_key);
