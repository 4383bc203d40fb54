-- wrk script: POST /api/v1/events/batch with gzip-encoded bodies (Content-Encoding:
-- gzip), 1,000 events each. benches/http_ingest.sh writes the ten bodies to
-- $BODY_DIR/1.json.gz .. 10.json.gz; they are read once and cycled.
local requests = {}
local bodies = 10

function init(args)
  local dir = os.getenv("BODY_DIR") or error("BODY_DIR is not set")
  for b = 1, bodies do
    local file = io.open(dir .. "/" .. b .. ".json.gz", "rb") or error("no body " .. b)
    local body = file:read("*a")
    file:close()
    requests[b] = wrk.format("POST", "/api/v1/events/batch",
      {["Content-Type"] = "application/json", ["Content-Encoding"] = "gzip"}, body)
  end
end

local n = 0
function request()
  n = n % bodies + 1
  return requests[n]
end
