-- wrk script: GET /health, the constant endpoint the ingest figures are compared to.
local req
function init(args)
  req = wrk.format("GET", "/health")
end
function request()
  return req
end
