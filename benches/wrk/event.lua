-- wrk script: POST /api/v1/events, one event per request.
-- The requests are formatted once in init(), for 1,000 players, and then cycled, so
-- wrk spends its CPU on the connection, not on building bodies.
local requests = {}
local count = 1000
local types = {"player_score", "player_score", "player_score", "player_level_up",
               "player_level_up", "quest_completed", "quest_completed",
               "achievement_unlocked", "achievement_unlocked", "boss_defeated"}

function init(args)
  for i = 1, count do
    local body = string.format(
      '{"event_type":"%s","player_id":"player-%d","game_id":"game-%d","timestamp":"2024-01-15T10:30:00Z","data":{"score":%d,"level":%d}}',
      types[(i % #types) + 1], i, i % 10, i * 7 % 1000, i % 100)
    requests[i] = wrk.format("POST", "/api/v1/events",
      {["Content-Type"] = "application/json"}, body)
  end
end

local n = 0
function request()
  n = n % count + 1
  return requests[n]
end
