-- wrk script: POST /api/v1/events/batch, BATCH events per request (default 1,000,
-- the default http.batch_limit). Ten distinct bodies are formatted once and cycled.
local requests = {}
local bodies = 10
local batch = tonumber(os.getenv("BATCH") or "1000")
local types = {"player_score", "player_score", "player_score", "player_level_up",
               "player_level_up", "quest_completed", "quest_completed",
               "achievement_unlocked", "achievement_unlocked", "boss_defeated"}

function init(args)
  for b = 1, bodies do
    local items = {}
    for i = 1, batch do
      local p = (b * batch + i) % 5000
      items[i] = string.format(
        '{"event_type":"%s","player_id":"player-%d","game_id":"game-%d","timestamp":"2024-01-15T10:30:00Z","data":{"score":%d}}',
        types[(i % #types) + 1], p, p % 10, i % 1000)
    end
    requests[b] = wrk.format("POST", "/api/v1/events/batch",
      {["Content-Type"] = "application/json"}, "[" .. table.concat(items, ",") .. "]")
  end
end

local n = 0
function request()
  n = n % bodies + 1
  return requests[n]
end
