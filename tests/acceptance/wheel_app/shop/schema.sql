-- The shop's own table (the app migrates it itself; `jobqueue migrate` owns only the queue's).
CREATE TABLE IF NOT EXISTS orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  item text NOT NULL,
  via text NOT NULL
);
