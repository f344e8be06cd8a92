/* Unit tests for the Lua plugin host (rl_lua): instances on a real loop, talking to a fake
 * parent process that records what it receives. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_config.h"
#include "rl_json.h"
#include "rl_lua.h"
#include "rl_lua_int.h"
#include "rl_metrics.h"
#include "rl_proc.h"

#include <lauxlib.h>
#include <lualib.h>

/* ---- a parent process that records messages -------------------------------------------- */

#define REC_MAX 256

typedef struct rec {
    rl_proc proc;
    int n;
    char *topic[REC_MAX], *payload[REC_MAX], *from[REC_MAX];
    int freed;
} rec;

/* The payload as text: the body, or a JSON rendering of a control struct. */
static char *payload_text(const rl_msg *m)
{
    char buf[1024];
    if (m->body)
        return strdup(m->body->data);
    if (m->topic == RL_T_PID_EXIT) {
        char err[600] = "null";
        if (m->ctl.exit.error)
            rl_json_escape(err, sizeof err, m->ctl.exit.error->data, m->ctl.exit.error->len);
        snprintf(buf, sizeof buf, "{\"pid\":\"%s\",\"error\":%s}", m->ctl.exit.pid, err);
        return strdup(buf);
    }
    if (m->topic == RL_T_WS_CLOSE) {
        char reason[300];
        rl_json_escape(reason, sizeof reason, m->ctl.close.reason, strlen(m->ctl.close.reason));
        snprintf(buf, sizeof buf, "{\"code\":%d,\"reason\":%s}", m->ctl.close.code, reason);
        return strdup(buf);
    }
    return strdup("");
}

static void rec_handle(rl_proc *p, rl_msg *m)
{
    rec *r = (rec *)p;
    if (r->n < REC_MAX) {
        size_t n;
        const char *t = rl_msg_topic_name(m, &n);
        r->topic[r->n] = strndup(t, n);
        r->payload[r->n] = payload_text(m);
        r->from[r->n] = strdup(m->from);
        r->n++;
    }
    rl_msg_free(m);
}

static rec parent;

/* Sends an application message with a JSON body from the parent. */
static int send_app(const char *to, const char *topic, const char *json)
{
    rl_msg *m = rl_msg_new_data(RL_T_APP, topic, strlen(topic), json, strlen(json));
    int rc = rl_send(&parent.proc, to, m);
    if (rc < 0)
        rl_msg_free(m);
    return rc;
}

static void rec_free(rl_proc *p) { ((rec *)p)->freed = 1; }

static const rl_proc_ops rec_ops = {.kind = "rec", .letter = 'r', .handle = rec_handle, .free = rec_free};

/* Index of the k-th (0-based) message with topic (and from, when not NULL), or -1. */
static int rec_find(const rec *r, const char *topic, const char *from, int k)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->topic[i], topic) == 0 && (!from || strcmp(r->from[i], from) == 0) && k-- == 0)
            return i;
    return -1;
}

static void rec_clear(rec *r)
{
    for (int i = 0; i < r->n; i++) {
        free(r->topic[i]);
        free(r->payload[i]);
        free(r->from[i]);
    }
    r->n = 0;
}

/* ---- fixture --------------------------------------------------------------------------- */

static uv_loop_t loop;
static uv_timer_t tick;
static rl_config cfg;
static rl_plugin_def defs[5];
static char tmpdir[64];

static const char probe_src[] =
    "local json = require('json')\n"
    "local time = require('time')\n"
    "local log = require('logger'):named('probe'):with({t = 1})\n"
    "local hub\n"
    "local function reply(v) process.send(hub, 'reply', v) end\n"
    "local cmds = {}\n"
    "function cmds.set_global(p)\n"
    "  evil_global = 'set by A'\n"
    "  local ok1 = pcall(function() string.evil = function() end end)\n"
    "  local ok2 = pcall(rawset, string, 'evil', 1)\n"
    "  local ok3 = pcall(function() getmetatable('').__index.evil = 1 end)\n"
    "  local ok4 = pcall(function() math.pi = 3 end)\n"
    "  local ok5 = pcall(setmetatable, {}, {__gc = function() end})\n"
    "  reply({ok1 = ok1, ok2 = ok2, ok3 = ok3, ok4 = ok4, ok5 = ok5, g = evil_global})\n"
    "end\n"
    "function cmds.get_global(p)\n"
    "  reply({g = evil_global == nil, s = string.evil == nil, pi = math.pi > 3.14,\n"
    "    up = ('x'):upper(), io = io == nil, debug = debug == nil, package = package == nil,\n"
    "    exec = os.execute == nil, dump = string.dump == nil, t = type(os.time()),\n"
    "    req = pcall(require, 'io') == false, bin = load(string.char(27) .. 'Lua') == nil,\n"
    "    txt = load('return 1 + 1')(), has_process = process ~= nil and channel ~= nil})\n"
    "end\n"
    "function cmds.crash() error('boom') end\n"
    "function cmds.finish() return 'done' end\n"
    "function cmds.spin() while true do end end\n"
    "function cmds.busy(p) local t = os.clock() while os.clock() - t < p.ms / 1000 do end reply({ok = true}) end\n"
    "function cmds.spin_pcall() while true do pcall(function() while true do end end) end end\n"
    "function cmds.hog()\n"
    "  local t = {}\n"
    "  for i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end\n"
    "end\n"
    "function cmds.sleep(p)\n"
    "  local t0 = time.now()\n"
    "  time.sleep(p.ms * time.MILLISECOND)\n"
    "  time.sleep('5ms')\n"
    "  reply({elapsed = time.now():sub(t0)})\n"
    "end\n"
    "function cmds.select2()\n"
    "  local a, b = channel.new(1), channel.new(1)\n"
    "  local got = {}\n"
    "  b:send('from b')\n"
    "  local r = channel.select({a:case_receive(), b:case_receive()})\n"
    "  got.v1 = r.value; got.c1 = r.channel == b; got.ok1 = r.ok\n"
    "  local t = time.after(20 * time.MILLISECOND)\n"
    "  local r2 = channel.select({a:case_receive(), t:case_receive()})\n"
    "  got.c2 = r2.channel == t\n"
    "  local r3 = channel.select({a:case_receive(), default = true})\n"
    "  got.d = r3.default == true\n"
    "  local c = channel.new(1)\n"
    "  local r4 = channel.select({c:case_send(42)})\n"
    "  got.sent = r4.ok and r4.value == 42 and r4.channel == c\n"
    "  got.v4 = c:receive()\n"
    "  -- a send and a receive case in one select; the receive case is the channel itself\n"
    "  local s1, s2 = channel.new(1), channel.new(1)\n"
    "  s2:send('x')\n"
    "  got.same = s2:case_receive() == s2\n"
    "  local r7 = channel.select({s1:case_send('y'), s2:case_receive()})\n"
    "  local r8 = channel.select({s1:case_send('z'), s2:case_receive()})\n"
    "  got.mixed = (r7.channel == s2 and r7.value == 'x' and r8.channel == s1 and s1:receive() == 'z')\n"
    "    or (r7.channel == s1 and r8.channel == s2 and r8.value == 'x' and s1:receive() == 'y')\n"
    "  got.bad = not pcall(channel.select, {42})\n"
    "  got.events_len = process.events():len() == 0\n"
    "  a:close()\n"
    "  got.close2 = pcall(a.close, a) and select('#', a:close()) == 0\n"
    "  got.send_closed = not pcall(a.send, a, 1)\n"
    "  local sc = channel.new(2)\n"
    "  local s_ok, s_n = sc:send('v'), select('#', sc:send('w'))\n"
    "  got.send_true = s_ok == true and s_n == 1 and sc:receive() == 'v'\n"
    "  local r5 = channel.select({a:case_receive()})\n"
    "  got.ok5 = r5.ok\n"
    "  local v6, ok6 = a:receive()\n"
    "  got.ok6 = ok6 == false and v6 == nil\n"
    "  local tk = time.ticker('5ms')\n"
    "  for i = 1, 3 do tk:channel():receive() end\n"
    "  got.stopped = tk:stop()\n"
    "  local tm = time.timer(5000000)\n"
    "  got.timer = getmetatable(tm:channel():receive()) == false\n"
    "  -- a producer coroutine filling a buffered channel, drained by the instance\n"
    "  local q = channel.new(4)\n"
    "  for i = 1, 4 do q:send(i) end\n"
    "  local sum = 0\n"
    "  for i = 1, 4 do sum = sum + q:receive() end\n"
    "  got.sum = sum\n"
    "  -- blocking inside the plugin's own coroutines, nested two deep, works (the resumes block too)\n"
    "  local t0 = time.now()\n"
    "  local inner = coroutine.wrap(function()\n"
    "    local deep = coroutine.create(function(x) time.sleep('10ms'); coroutine.yield(x + 1); return q:receive() end)\n"
    "    local ok1, v1 = coroutine.resume(deep, 1)\n"
    "    q:send(5)\n"
    "    local ok2, v2 = coroutine.resume(deep)\n"
    "    return ok1 and v1 == 2 and ok2 and v2 == 5\n"
    "  end)\n"
    "  got.nested = inner() == true\n"
    "  got.nested_slept = time.now():sub(t0) >= 5 * time.MILLISECOND -- (the loop clock is cached)\n"
    "  got.nested_sort = select(2, pcall(table.sort, {2, 1}, function(a, b)\n"
    "    return coroutine.wrap(function() time.sleep('1ms'); return a < b end)()\n"
    "  end)):find('C%-call boundary') ~= nil\n"
    "  reply(got)\n"
    "end\n"
    "function cmds.json()\n"
    "  assert(json.encode({}) == '[]')\n"
    "  assert(json.encode({1, 2, 3}) == '[1,2,3]')\n"
    "  assert(json.encode({b = {true, false}, a = 1}) == '{\"a\":1,\"b\":[true,false]}')\n"
    "  assert(json.encode('x\"y\\n') == '\"x\\\\\"y\\\\n\"')\n"
    "  assert(json.encode(1.5) == '1.5' and json.encode(nil) == 'null')\n"
    "  local v, err = json.encode({1, 2, x = 3})\n"
    "  assert(v == nil and err:find('mix'))\n"
    "  assert(json.encode({[1] = 1, [3] = 3}) == nil)\n"
    "  assert(json.encode(function() end) == nil)\n"
    "  assert(json.encode(0/0) == 'null' and json.encode(-1/0) == 'null')\n"
    "  assert(json.encode(json.object()) == '{}' and json.encode(json.decode('{}')) == '{}')\n"
    "  local emptied = json.decode('{\"a\":1}'); emptied.a = nil\n"
    "  assert(json.encode(emptied) == '{}' and getmetatable(json.decode('{}')) == nil)\n"
    "  assert(json.encode({v = 0/0, w = 1/0}) == '{\"v\":null,\"w\":null}')\n"
    "  assert(math.type(json.decode('42.0')) == 'float' and json.encode(json.decode('42.0')) == '42.0')\n"
    "  assert(math.type(json.decode('1e3')) == 'float' and json.decode(json.encode(json.decode('1e3'))) == 1000.0)\n"
    "  local deep = {}\n"
    "  local cur = deep\n"
    "  for i = 1, 200 do cur.x = {}; cur = cur.x end\n"
    "  assert(json.encode(deep) == nil)\n"
    "  local cyc = {}; cyc.self = cyc\n"
    "  assert(json.encode(cyc) == nil)\n"
    "  local src = {user = 'alice', n = 42, f = 2.25, list = {1, 'two', {three = 3}},\n"
    "    nested = {ok = true, no = false}}\n"
    "  local back = json.decode(json.encode(src))\n"
    "  assert(back.user == 'alice' and back.n == 42 and math.type(back.n) == 'integer')\n"
    "  assert(back.f == 2.25 and back.list[2] == 'two' and back.list[3].three == 3)\n"
    "  assert(back.nested.ok == true and back.nested.no == false)\n"
    "  local bad, derr = json.decode('{bad')\n"
    "  assert(bad == nil and type(derr) == 'string')\n"
    "  assert(json.decode('[1] x') == nil)\n"
    "  assert(json.decode('null') == nil)\n"
    "  assert(json.decode(string.rep('[', 300) .. string.rep(']', 300)) == nil)\n"
    "  assert(json.decode('\"\\\\u00e9\"') == '\\195\\169')\n"
    "  assert(json.encode('\\255') == '\"\\\\ufffd\"')\n"
    "  assert(time.parse_duration('1m30s') == 90 * time.SECOND)\n"
    "  assert(time.parse_duration('1.5s'):seconds() == 1.5 and time.parse_duration('bogus') == nil)\n"
    "  local t = time.parse(time.RFC3339, '2024-01-02T03:04:05Z')\n"
    "  assert(t:unix() == 1704164645 and t:format_rfc3339() == '2024-01-02T03:04:05Z')\n"
    "  log:info('json ok', {x = 1})\n"
    "  reply({ok = true})\n"
    "end\n"
    "function cmds.registry()\n"
    "  assert(process.registry.register('me'))\n"
    "  assert(process.registry.lookup('me') == process.pid())\n"
    "  assert(process.send('me', 'self_note', {}))\n"
    "  local _, e = process.send(hub, '@x', 1)\n"
    "  local _, e2 = process.send((process.pid():gsub('p%d+%.%x+$', 'p999.00000000')), 'x', 1)\n"
    "  reply({e = e, e2 = e2})\n"
    "end\n"
    "function cmds.nilerr() return nil, 'bad thing' end\n"
    "function cmds.procapi()\n"
    "  local ev = process.events()\n"
    "  local args = {user_hub_pid = hub}\n"
    "  local c1 = process.spawn_monitored('app:probe', 'app:processes', args)\n"
    "  local un = process.unmonitor(c1)\n"
    "  process.send(c1, 'crash', {})\n"
    "  local c2 = process.spawn_monitored('app:probe', 'app:processes', args)\n"
    "  process.send(c2, 'nilerr', {})\n"
    "  local e1 = ev:receive()\n"
    "  local c3 = process.spawn_monitored('app:probe', 'app:processes', args)\n"
    "  process.cancel(c3, 'shutting down')\n"
    "  local e2 = ev:receive()\n"
    "  reply({id_ok = process.id() == process.pid(), un = un == true, c2 = e1.from == c2,\n"
    "    err = e1.result.error, c3 = e2.from == c3 and e2.result.error == nil,\n"
    "    me = process.pid(), empty = ev:len() == 0})\n"
    "end\n"
    "function cmds.flood(p) time.sleep(p.ms * time.MILLISECOND) end\n"
    "function cmds.ignore_cancel() while true do time.sleep('1s') end end\n"
    "function cmds.durations()\n"
    "  local d = {}\n"
    "  d.units = time.NANOSECOND == 1 and time.MICROSECOND == 1000 and time.MILLISECOND == 1000000\n"
    "    and time.SECOND == 1000000000 and time.MINUTE == 60 * time.SECOND\n"
    "    and time.HOUR == 3600 * time.SECOND and math.type(time.SECOND) == 'integer'\n"
    "  local p = time.parse_duration\n"
    "  d.parse = p('500ms') == 500000000 and p('1.5s') == 1500000000 and p('2m') == 120 * time.SECOND\n"
    "    and p('1h30m') == 90 * time.MINUTE and p('10us') == 10000 and p('5ns') == 5\n"
    "    and p(time.SECOND) == time.SECOND and math.type(p('1.5s')) == 'integer'\n"
    "    and p('bogus') == nil and p('1') == nil and p('3000000h') == nil\n"
    "  local x = p('1h30m45s500ms')\n"
    "  d.accessors = math.abs(x:hours() - 5445.5 / 3600) < 1e-12\n"
    "    and math.abs(x:minutes() - 5445.5 / 60) < 1e-12\n"
    "    and x:seconds() == 5445.5 and x:milliseconds() == 5445500\n"
    "    and x:microseconds() == 5445500000 and x:nanoseconds() == 5445500000000\n"
    "    and math.type(x:milliseconds()) == 'integer' and (1999999):milliseconds() == 1\n"
    "    and (-1999999):milliseconds() == -1\n"
    "  local t0 = time.now()\n"
    "  time.sleep(200000000)\n"
    "  local e1 = time.now():sub(t0)\n"
    "  time.sleep('150ms')\n"
    "  local e2 = time.now():sub(t0)\n"
    "  d.sub_int = math.type(e1) == 'integer' and math.type(time.since(t0)) == 'integer'\n"
    "  d.e1, d.e2 = e1, e2\n"
    "  local t1 = time.now()\n"
    "  time.after(30 * time.MILLISECOND):receive()\n"
    "  time.timer('30ms'):channel():receive()\n"
    "  local tk = time.ticker(10 * time.MILLISECOND)\n"
    "  tk:channel():receive(); tk:channel():receive(); tk:stop()\n"
    "  d.e3 = time.now():sub(t1)\n"
    "  d.ticker_min = not pcall(time.ticker, 1000)\n"
    "  local a = time.unix(10, 0)\n"
    "  d.add = a:add(time.SECOND):unix() == 11 and a:add('1.5s'):unix_nano() == 11500000000\n"
    "    and a:add(2 * time.SECOND):sub(a) == 2 * time.SECOND and a:unix_nano() == 10 * time.SECOND\n"
    "  reply(d)\n"
    "end\n"
    "function cmds.spawn(p)\n"
    "  local child = process.spawn_monitored('app:probe', 'app:processes', {user_hub_pid = hub})\n"
    "  process.send(child, 'crash', {})\n"
    "  local ev = process.events():receive()\n"
    "  reply({kind = ev.kind, from_ok = ev.from == child, err = ev.result.error})\n"
    "end\n"
    "local function run(args)\n"
    "  hub = args.user_hub_pid\n"
    "  local inbox, events = process.inbox(), process.events()\n"
    "  while true do\n"
    "    local r = channel.select({inbox:case_receive(), events:case_receive()})\n"
    "    if not r.ok then break end\n"
    "    if r.channel == events then\n"
    "      if r.value.kind == process.event.CANCEL then\n"
    "        reply({cancelled = true, deadline = r.value.deadline, reason = r.value.reason,\n"
    "          from = r.value.from})\n"
    "        return\n"
    "      end\n"
    "    else\n"
    "      local msg = r.value\n"
    "      local f = cmds[msg:topic()]\n"
    "      if f then\n"
    "        local out, e = f(msg:payload():data())\n"
    "        if out or e then return out, e end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return { run = run }\n";

/* Lua pattern functions on many inputs, the same code in a plugin (our bounded matcher) and in
   a stock state (Lua's own): the serialised results must be identical. `...` is a pause
   function (coroutine.yield in the plugin, so no resume runs out of budget). */
#define PATTERN_CASES                                                                             \
    "local pause = ...\n"                                                                          \
    "local function ser(...)\n"                                                                    \
    "  local t = {}\n"                                                                             \
    "  for i = 1, select('#', ...) do local v = select(i, ...)\n"                                  \
    "    t[i] = type(v) == 'string' and string.format('%q', v) or tostring(v) end\n"               \
    "  return '(' .. table.concat(t, ',') .. ')'\n"                                                \
    "end\n"                                                                                        \
    "local function gm(s, p, init)\n"                                                              \
    "  local r = {}\n"                                                                             \
    "  for a, b in string.gmatch(s, p, init) do r[#r + 1] = ser(a, b); if #r > 20 then break end end\n" \
    "  return table.concat(r)\n"                                                                   \
    "end\n"                                                                                        \
    "local out = {}\n"                                                                             \
    "local function case(s, p, init)\n"                                                            \
    "  out[#out + 1] = ser(pcall(string.find, s, p, init)) .. ser(pcall(string.match, s, p, init))\n" \
    "    .. ser(pcall(gm, s, p, init)) .. ser(pcall(string.gsub, s, p, '<%0|%1>'))\n"               \
    "    .. ser(pcall(string.gsub, s, p, {a = 'A', [' '] = false}, 3))\n"                          \
    "    .. ser(pcall(string.gsub, s, p, function(x, y) return y and x .. y or nil end))\n"        \
    "    .. ser(pcall(string.find, s, p, init, true)) .. '\\n'\n"                                  \
    "end\n"                                                                                        \
    "local fixed = {\n"                                                                            \
    "  {'  hello world  ', '^%s*(.-)%s*$'}, {'key = value', '(%w+)%s*=%s*(%w+)'},\n"               \
    "  {'f(a(b)c)d', '%b()'}, {'THE (quick) fox', '%f[%a]%a+'}, {'hello', '()ll()'},\n"            \
    "  {'abcabc', '(a)(b)c%1%2'}, {'a.b.c', '.', 2}, {'a.b.c', '%.', -2}, {'x', ''},\n"            \
    "  {'', ''}, {'', 'a*'}, {'aaa', 'a-b'}, {'aaab', 'a-b'}, {'[x]', '[]]'}, {'a-z', '[a%-z]+'},\n" \
    "  {'2024-01-02', '(%d+)-(%d+)-(%d+)'}, {'abc', '[^%a]'}, {'a]b', '[]a]+'}, {'^x', '^^x'},\n"  \
    "  {'x$', 'x$$'}, {'a\\0b', 'a%zb'}, {'a\\0b', '\\0'}, {'abc', 'b', 10}, {'abc', 'b', -10},\n" \
    "  {'abc', '%'}, {'abc', '[a'}, {'abc', '(a'}, {'abc', 'a)'}, {'abc', '%1'}, {'abc', '%f'},\n"  \
    "  {'abc', '%b'}, {'hello world from lua', '(%w+) (%w+)'}, {'abc', '((a)(b))'},\n"            \
    "  {'  x  ', '^%s+'}, {'x', '[%w_]'}, {'a,b,,c', '([^,]*)'}, {'abc', 'abc', 4},\n"             \
    "  {'abc', '', 4}, {'abc', '', 5}, {'one two', '%a+', 5},\n"                                  \
    "}\n"                                                                                          \
    "for _, c in ipairs(fixed) do case(c[1], c[2], c[3]) end\n"                                    \
    "local seed = 12345\n"                                                                         \
    "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end\n" \
    "local atoms = {'a', 'b', '.', '%a', '%d', '%s', '[ab]', '[^a]', '%%', '(', ')', '()', '*',\n" \
    "  '+', '-', '?', '^', '$', '%b()', '%f[%w]', '%1', '[a-c]', ' ', 'x', '%W', '[%s%d]'}\n"      \
    "local chars = {'a', 'b', 'c', ' ', '(', ')', '1', 'x', '%', '\\0'}\n"                          \
    "for i = 1, 1500 do\n"                                                                         \
    "  local p, s = {}, {}\n"                                                                      \
    "  for j = 1, rnd(5) do p[j] = atoms[rnd(#atoms)] end\n"                                       \
    "  for j = 1, rnd(10) - 1 do s[j] = chars[rnd(#chars)] end\n"                                  \
    "  case(table.concat(s), table.concat(p), rnd(5) - 2)\n"                                       \
    "  if i % 50 == 0 then pause() end\n"                                                          \
    "end\n"                                                                                        \
    "for _, r in ipairs({{'ab', 0}, {'ab', 1}, {'ab', 5}, {'', 3, ','}, {'x', 7, ', '},\n"         \
    "    {'a', 1, 'sep'}, {'\\0z', 4, '\\0'}, {'xy', 33, '-'}, {'ab', 1000, '|'}, {'abc', 4097}}) do\n" \
    "  out[#out + 1] = ser(pcall(string.rep, r[1], r[2], r[3])) .. '\\n'\n"                        \
    "end\n"                                                                                        \
    "return table.concat(out)\n"

/* A hostile plugin: each command attacks one part of the sandbox. Commands that must end the
   instance never reply. */
static const char sandbox_src[] =
    "local json = require('json')\n"
    "local time = require('time')\n"
    "local hub, config\n"
    "local function reply(v) process.send(hub, 'reply', v) end\n"
    "local evil = function() return 'PWNED' end\n"
    "local cmds = {}\n"
    "local function libs()\n"
    "  return {string = string, table = table, math = math, json = json, process = process,\n"
    "    channel = channel, time = require('time'), os = os, utf8 = utf8, coroutine = coroutine,\n"
    "    registry = process.registry, event = process.event, security = require('security'),\n"
    "    logger = require('logger'), config = config}\n"
    "end\n"
    /* every write path into every library table, nested ones included; counts successes */
    "function cmds.ro_attack()\n"
    "  local wins, tried = {}, 0\n"
    "  local function try(what, f) tried = tried + 1; if pcall(f) then wins[#wins + 1] = what end end\n"
    "  for name, lib in pairs(libs()) do\n"
    "    local _, state = pairs(lib)\n"
    "    try(name .. ' pairs state', function() state.upper = evil; state.send = evil; state.encode = evil end)\n"
    "    try(name .. ' pairs rawset', function() rawset(state, 'x', evil) end)\n"
    "    try(name .. ' rawset', function() rawset(lib, 'x', evil) end)\n"
    "    try(name .. ' index', function() lib.x = evil end)\n"
    "    try(name .. ' metatable', function() getmetatable(lib).__index.x = evil end)\n"
    "    try(name .. ' setmetatable', function() setmetatable(lib, {}) end)\n"
    "    for k, v in pairs(lib) do\n"
    "      if type(v) == 'table' then\n"
    "        try(name .. '.' .. k .. ' index', function() v.x = evil end)\n"
    "        try(name .. '.' .. k .. ' pairs', function() local _, st = pairs(v); st.x = evil end)\n"
    "        try(name .. '.' .. k .. ' rawset', function() rawset(v, 'x', evil) end)\n"
    "      end\n"
    "    end\n"
    "    local k, v = next(lib)\n"
    "    if type(v) == 'table' then try(name .. ' next', function() v.x = evil end) end\n"
    "  end\n"
    "  try('string metatable', function() getmetatable('').__index.upper = evil end)\n"
    "  try('string mt rawget', function() rawget(getmetatable(''), '__index').upper = evil end)\n"
    "  try('number metatable', function() getmetatable(0).__index.seconds = evil end)\n"
    "  local reads = rawget(string, 'format') == string.format and next(string) ~= nil\n"
    "    and rawlen(table) == 0 and select(2, pcall(function() local n = 0\n"
    "      for _ in pairs(string) do n = n + 1 end return n end)) > 10\n"
    "  reply({wins = table.concat(wins, '; '), tried = tried, reads = reads})\n"
    "end\n"
    "function cmds.ro_check()\n"
    "  reply({ok = ('x'):upper() == 'X' and string.upper('y') == 'Y' and json.encode({1}) == '[1]'\n"
    "    and string.x == nil and process.x == nil and json.x == nil and config.x == nil\n"
    "    and process.registry.x == nil and type(process.send) == 'function'\n"
    "    and process.send ~= evil and table.concat({'a', 'b'}) == 'ab'})\n"
    "end\n"
    /* the budget is final, whoever catches the error */
    "local function spin() while true do end end\n"
    "function cmds.co_pcall()\n"
    "  while true do pcall(coroutine.wrap(function() while true do pcall(spin) end end)) end\n"
    "end\n"
    "function cmds.co_resume()\n"
    "  while true do coroutine.resume(coroutine.create(function() while true do pcall(spin) end end)) end\n"
    "end\n"
    "function cmds.xpcall_loop()\n"
    "  while true do xpcall(spin, function() while true do end end) end\n"
    "end\n"
    "function cmds.sort_cmp()\n"
    "  while true do pcall(table.sort, {3, 1, 2, 5, 4}, function(a, b) spin() end) end\n"
    "end\n"
    "function cmds.gsub_cb()\n"
    "  while true do pcall(string.gsub, 'abc', '.', function() while true do pcall(spin) end end) end\n"
    "end\n"
    "function cmds.tostring_mm()\n"
    "  local t = setmetatable({}, {__tostring = function() while true do pcall(spin) end end})\n"
    "  while true do pcall(tostring, t) end\n"
    "end\n"
    "function cmds.index_mm()\n"
    "  local t = setmetatable({}, {__index = function() spin() end})\n"
    "  while true do pcall(function() return t.x end) end\n"
    "end\n"
    "function cmds.close_mm()\n"
    "  while true do\n"
    "    local co = coroutine.create(function()\n"
    "      local x <close> = setmetatable({}, {__close = function() spin() end})\n"
    "      coroutine.yield()\n"
    "    end)\n"
    "    coroutine.resume(co)\n"
    "    pcall(coroutine.close, co)\n"
    "  end\n"
    "end\n"
    "function cmds.gc_mm()\n"
    "  local ran = false\n"
    "  local refused = not pcall(setmetatable, {}, {__gc = function() ran = true; spin() end})\n"
    "  local mt = {}\n"
    "  setmetatable({}, mt)\n"
    "  mt.__gc = function() ran = true; spin() end -- too late: never a finalizer\n"
    "  local junk = {}\n"
    "  for i = 1, 50000 do junk[i % 64] = {i} end\n"
    "  reply({refused = refused, ran = ran})\n"
    "end\n"
    "function cmds.catastrophic()\n"
    "  while true do pcall(string.find, ('a'):rep(40), ('a*'):rep(40) .. 'b') end\n"
    "end\n"
    "function cmds.bomb_once()\n" /* one call is cut short and the instance lives on */
    "  local ok, err = pcall(string.find, ('a'):rep(40), ('a*'):rep(40) .. 'b')\n"
    "  local ok2, err2 = pcall(string.gsub, ('a'):rep(40), ('a*'):rep(40) .. 'b', '')\n"
    "  local it = string.gmatch(('a'):rep(40), ('a*'):rep(40) .. 'b')\n"
    "  local ok3, err3 = pcall(it)\n"
    "  local n = 0 for _ in (('x '):rep(2000)):gmatch('%S+') do n = n + 1 end\n"
    "  reply({ok = ok or ok2 or ok3, err = tostring(err), err2 = tostring(err2),\n"
    "         err3 = tostring(err3), words = n,\n"
    "         trim = (('  y  '):rep(500)):match('^%s*(.-)%s*$') ~= nil})\n"
    "end\n"
    "function cmds.plain_find()\n"
    "  while true do pcall(string.find, ('a'):rep(1e6), ('a'):rep(5e5) .. 'b', 1, true) end\n"
    "end\n"
    "function cmds.rep_empty() while true do pcall(string.rep, '', 1e12) end end\n"
    "function cmds.rep_big() local s = ('x'):rep(1e9) end\n"
    "function cmds.concat_big()\n"
    "  local s = ('x'):rep(1e6)\n"
    "  local t = {}\n"
    "  for i = 1, 100 do t[i] = s end\n"
    "  pcall(table.concat, t)\n"
    "  reply({survived = true})\n"
    "end\n"
    "function cmds.move_far() while true do pcall(table.move, {}, 1, 1e12, 2) end end\n"
    "function cmds.insert_front()\n"
    "  local t = {}\n"
    "  for i = 1, 1e6 do table.insert(t, 1, i) end\n"
    "end\n"
    "function cmds.sort_big()\n"
    "  local t = {}\n"
    "  for i = 1, 20000 do table.insert(t, i) end -- appending is not charged the length\n"
    "  for i = 1, 20000 do table.remove(t) end\n"
    "  for i = 1, 20000 do t[i] = (i * 7919) % 20000 end\n"
    "  table.sort(t)\n"
    "  reply({sorted = t[1] == 0 and t[20000] == 19999})\n"
    "end\n"
    "function cmds.idioms(p)\n"
    "  local s = p.s\n"
    "  local t0 = os.clock()\n"
    "  local trimmed = s:match('^%s*(.-)%s*$')\n"
    "  local n = select(2, s:gsub('%s+', ' '))\n"
    "  local words = 0\n"
    "  for w in s:gmatch('%S+') do words = words + 1 end\n"
    "  reply({trimmed = trimmed, spaces = n, words = words, ms = (os.clock() - t0) * 1000,\n"
    "    small = ('  a b  '):match('^%s*(.-)%s*$')})\n"
    "end\n"
    "function cmds.patterns(p) reply({out = assert(load(p.code))(coroutine.yield)}) end\n"
    "function cmds.alive() reply({alive = true}) end\n"
    "function cmds.die() error('die') end\n"
    /* per-instance bounds: each loop stops at the first refusal */
    "function cmds.children(p)\n"
    "  local pids, err = {}\n"
    "  while #pids < (p.max or 1e6) do\n"
    "    local pid, e = process.spawn('app:sandbox', 'app:processes', {})\n"
    "    if not pid then err = e; break end\n"
    "    pids[#pids + 1] = pid\n"
    "  end\n"
    "  reply({n = #pids, err = err})\n"
    "end\n"
    "local keep = {}\n"
    "function cmds.timers()\n"
    "  local n, ok, err = 0\n"
    "  repeat ok, err = pcall(time.ticker, '1s'); if ok then n = n + 1; keep[n] = err end until not ok\n"
    "  local after_ok = pcall(time.after, 10)\n"
    "  keep[1]:stop()\n"
    "  local again = pcall(time.after, 10)\n"
    "  reply({n = n, err = err, after_ok = after_ok, again = again})\n"
    "end\n"
    "function cmds.channels()\n"
    "  local n, ok, err = 0\n"
    "  repeat ok, err = pcall(channel.new, 1); if ok then n = n + 1; keep[n] = err end until not ok\n"
    "  reply({n = n, err = err})\n"
    "end\n"
    "local function run(args)\n"
    "  hub, config = args.user_hub_pid, args.config\n"
    "  local inbox = process.inbox()\n"
    "  while true do\n"
    "    local msg, ok = inbox:receive()\n"
    "    if not ok then break end\n"
    "    local f = cmds[msg:topic()]\n"
    "    if f then f(msg:payload():data()) end\n"
    "  end\n"
    "end\n"
    "return { run = run }\n";

static char *write_tmp(const char *name, const char *src)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(src, f);
    fclose(f);
    return strdup(path);
}

static void set_def(rl_plugin_def *d, const char *name, const char *id, const char *prefix,
                    char *path)
{
    d->name = strdup(name);
    d->id = strdup(id);
    d->prefix = strdup(prefix);
    d->source_path = path;
    d->method = strdup("run");
}

static void free_defs(void)
{
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        free(defs[i].name);
        free(defs[i].id);
        free(defs[i].prefix);
        if (defs[i].source_path)
            unlink(defs[i].source_path);
        free(defs[i].source_path);
        free(defs[i].method);
    }
    memset(defs, 0, sizeof defs);
}

static void tick_cb(uv_timer_t *t) { (void)t; }

/* The instruction budget of the next setup: at this value (>= RL_LUA_LAZY_BUDGET) only long runs
   are counted; test_budget_small_always_counted sets a smaller one. */
static uint64_t budget_value = 1000000;

static int setup_with(size_t mem_limit, size_t queue)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rl_lua_test_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    uv_loop_init(&loop);
    uv_timer_init(&loop, &tick);
    if (rl_node_init(&loop, "t1") < 0)
        return -1;
    rl_config defaults;
    rl_config_defaults(&defaults); /* the sandbox limits at their defaults */
    memset(&cfg, 0, sizeof cfg);
    cfg.lua_result_max = defaults.lua_result_max;
    cfg.plugin_max_children = defaults.plugin_max_children;
    cfg.plugin_max_timers = defaults.plugin_max_timers;
    cfg.plugin_max_channels = defaults.plugin_max_channels;
    cfg.plugin_user_max_processes = defaults.plugin_user_max_processes;
    cfg.plugin_user_max_timers = defaults.plugin_user_max_timers;
    cfg.plugin_user_max_channels = defaults.plugin_user_max_channels;
    rl_config_free(&defaults);
    cfg.path = strdup("test.yaml");
    cfg.lua_instruction_budget = budget_value;
    cfg.lua_memory_limit = mem_limit;
    cfg.plugin_queue = queue;
    FILE *f = fopen("plugins/lua/session.lua", "r");
    char session[4096] = {0};
    if (f) {
        size_t n = fread(session, 1, sizeof session - 1, f);
        session[n] = '\0';
        fclose(f);
    }
    if (!session[0])
        return -1; /* run from the repository root */
    set_def(&defs[0], "session_plugin", "app:session_plugin", "session_",
            write_tmp("session.lua", session));
    set_def(&defs[1], "probe", "app:probe", "probe_", write_tmp("probe.lua", probe_src));
    f = fopen("plugins/lua/echo.lua", "r");
    char echo[4096] = {0};
    if (f) {
        size_t n = fread(echo, 1, sizeof echo - 1, f);
        echo[n] = '\0';
        fclose(f);
    }
    set_def(&defs[2], "echo", "app:echo", "echo_", write_tmp("echo.lua", echo));
    set_def(&defs[3], "sandbox", "app:sandbox", "sandbox_", write_tmp("sandbox.lua", sandbox_src));
    cfg.plugins = defs;
    cfg.nplugins = 4;
    char err[512];
    if (rl_lua_init(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "init: %s\n", err);
        return -1;
    }
    memset(&parent, 0, sizeof parent);
    rl_owner *alice = rl_owner_get("alice", 5); /* the parent stands in for alice's hub */
    int rc = rl_proc_start(&parent.proc, &rec_ops, 0, alice);
    rl_owner_unref(alice);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    return setup_with(64u << 20, 64);
}

static int teardown(void **state)
{
    (void)state;
    rl_lua_close();
    rl_proc_exit(&parent.proc, NULL);
    rl_node_close();
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_true(parent.freed);
    rec_clear(&parent);
    free_defs();
    free(cfg.path);
    rmdir(tmpdir);
    return 0;
}

/* Runs the loop until the parent has `count` messages with topic, or timeout_ms passes. */
static int wait_for(const char *topic, int count, int timeout_ms)
{
    uv_timer_start(&tick, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + (uint64_t)timeout_ms;
    while (rec_find(&parent, topic, NULL, count - 1) < 0 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    return rec_find(&parent, topic, NULL, count - 1);
}

static void spawn(int def, char pid[RL_PID_MAX])
{
    char err[256];
    rl_body *meta = rl_body_new("{\"plan\":\"pro\"}", 14);
    rl_spawn_args a = {&defs[def], parent.proc.owner, &parent.proc, meta, &cfg};
    int rc = rl_lua_spawn(&a, pid, err, sizeof err);
    rl_body_unref(meta);
    if (rc < 0)
        fprintf(stderr, "spawn: %s\n", err);
    assert_int_equal(rc, 0);
}

static void send_cmd(const char *pid, const char *topic, const char *extra)
{
    char payload[512];
    snprintf(payload, sizeof payload, "{\"conn_pid\":\"%s\"%s%s}", parent.proc.pid,
             extra ? "," : "", extra ? extra : "");
    assert_int_equal(send_app(pid, topic, payload), 0);
}

static cJSON *reply_json(int k)
{
    int i = wait_for("reply", k + 1, 3000);
    assert_true(i >= 0);
    cJSON *j = cJSON_Parse(parent.payload[i]);
    assert_non_null(j);
    return j;
}

static int jtrue(const cJSON *j, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, key));
}

/* The exit report of pid: its "error" (NULL for a normal exit) in *error; -1 if none came. */
static int exit_of(const char *pid, char *error, size_t n, int timeout_ms)
{
    uv_timer_start(&tick, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + (uint64_t)timeout_ms;
    int i;
    while ((i = rec_find(&parent, "pid.exit", pid, 0)) < 0 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    if (i < 0)
        return -1;
    cJSON *j = cJSON_Parse(parent.payload[i]);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (cJSON_IsString(e))
        snprintf(error, n, "%s", e->valuestring);
    else
        error[0] = '\0';
    int is_null = cJSON_IsNull(e);
    cJSON_Delete(j);
    return is_null ? 0 : 1;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_spec_example(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    spawn(0, pid);
    assert_int_equal(rl_proc_count('p'), 1);
    assert_int_equal(send_app(pid, "resume", "{}"), 0);
    send_cmd(pid, "get_state", "\"type\":\"session_get_state\",\"data\":{\"key\":\"value\"}");
    int i = wait_for("ws.message", 1, 3000);
    assert_true(i >= 0);
    assert_string_equal(parent.from[i], pid);
    /* json.encode gave a string: ws.message sends it as the frame itself, byte for byte the
       frame the spec shows: "type" leads, the rest is sorted */
    assert_string_equal(parent.payload[i], "{\"type\":\"session_state\",\"data\":{\"status\":\"active\"}}");
    cJSON *inner = cJSON_Parse(parent.payload[i]);
    assert_string_equal(cJSON_GetObjectItem(inner, "type")->valuestring, "session_state");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(inner, "data"), "status")->valuestring, "active");
    cJSON_Delete(inner);
    /* CANCEL makes the spec's loop break and run() return: a normal exit. */
    assert_int_equal(rl_cancel(NULL, pid, 1000), 0);
    char err[256];
    assert_int_equal(exit_of(pid, err, sizeof err, 3000), 0);
    assert_int_equal(rl_proc_count('p'), 0);
    assert_true(rl_lua_memory() > 0);
}

static void test_echo(void **state)
{
    (void)state;
    char pid[RL_PID_MAX], err[256];
    spawn(2, pid);
    send_cmd(pid, "ping", "\"type\":\"echo_ping\",\"request_id\":\"r1\",\"data\":{\"x\":[1,2]}");
    int i = wait_for("ws.message", 1, 3000);
    assert_true(i >= 0);
    assert_string_equal(parent.payload[i],
                        "{\"type\":\"echo_pong\",\"data\":{\"x\":[1,2]},\"request_id\":\"r1\"}");
    assert_int_equal(rl_cancel(NULL, pid, 1000), 0);
    assert_int_equal(exit_of(pid, err, sizeof err, 3000), 0);
}

/* A message the plugin received and dropped gives its body back when Lua frees it (no __gc:
   the allocator releases it, rl_lua_block_freeing), here after the quiet full collection. */
static void test_msg_released_without_finalizer(void **state)
{
    (void)state;
    char pid[RL_PID_MAX], err[256];
    assert_non_null(rl_lua_msg_freed_mt); /* the userdata layout held on the Lua loaded */
    spawn(2, pid);
    rl_body *b = rl_body_new("{\"x\":1}", 7); /* no conn_pid: the echo drops it */
    for (int i = 0; i < 2000; i++) {
        rl_msg *m = rl_msg_new_body(RL_T_APP, "ping", 4, b);
        assert_non_null(m);
        if (rl_send(&parent.proc, pid, m) < 0)
            rl_msg_free(m);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    uv_timer_start(&tick, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + 4000;
    while (b->refs > 1 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    assert_int_equal(b->refs, 1);
    /* A block that only looks like a message (its tag and metatable where a message has them,
       as a plugin's bytes or a freed message's stale ones could be) without the canary is left
       alone: the body it names keeps its reference. */
    _Alignas(16) unsigned char fake[128] = {0};
    fake[RL_LUA_GC_TAG_OFF] = RL_LUA_UDATA_VTAG;
    memcpy(fake + RL_LUA_UDATA_MT_OFF, &rl_lua_msg_freed_mt, sizeof(void *));
    uint64_t not_the_canary = 0x5eed;
    memcpy(fake + RL_LUA_UDATA_MEM_OFF, &not_the_canary, sizeof not_the_canary);
    memcpy(fake + RL_LUA_UDATA_MEM_OFF + 8, &b, sizeof b); /* where a message keeps its body */
    rl_lua_block_freeing(fake, sizeof fake);
    assert_int_equal(b->refs, 1);
    rl_body_unref(b);
    assert_int_equal(rl_cancel(NULL, pid, 1000), 0);
    assert_int_equal(exit_of(pid, err, sizeof err, 3000), 0);
}

static void test_isolation(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    spawn(1, a);
    spawn(1, b);
    send_cmd(a, "set_global", NULL);
    cJSON *ra = reply_json(0);
    assert_false(jtrue(ra, "ok1"));
    assert_false(jtrue(ra, "ok2"));
    assert_false(jtrue(ra, "ok3"));
    assert_false(jtrue(ra, "ok4"));
    assert_false(jtrue(ra, "ok5"));
    assert_string_equal(cJSON_GetObjectItem(ra, "g")->valuestring, "set by A");
    cJSON_Delete(ra);
    send_cmd(b, "get_global", NULL);
    cJSON *rb = reply_json(1);
    const char *keys[] = {"g", "s", "pi", "io", "debug", "package", "exec", "dump", "req", "bin",
                          "has_process"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!jtrue(rb, keys[i]))
            fail_msg("isolation check %s failed: %s", keys[i], cJSON_PrintUnformatted(rb));
    }
    assert_string_equal(cJSON_GetObjectItem(rb, "up")->valuestring, "X");
    assert_string_equal(cJSON_GetObjectItem(rb, "t")->valuestring, "number");
    assert_int_equal(cJSON_GetObjectItem(rb, "txt")->valueint, 2);
    cJSON_Delete(rb);
}

static void test_crash_and_return(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX], err[256];
    spawn(1, a);
    spawn(1, b);
    send_cmd(a, "crash", NULL);
    send_cmd(b, "finish", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 3000), 1);
    assert_non_null(strstr(err, "boom"));
    assert_non_null(strstr(err, "probe.lua:")); /* file and line of the error */
    assert_int_equal(exit_of(b, err, sizeof err, 3000), 0);
    /* Sending to an exited instance fails. */
    assert_int_equal(send_app(a, "x", "{}"), -ENOENT);
}

static void test_budget(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX], c[RL_PID_MAX], err[256];
    spawn(1, a);
    spawn(1, b);
    spawn(1, c);
    send_cmd(a, "spin", NULL);
    send_cmd(b, "spin_pcall", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 5000), 1);
    assert_string_equal(err, "instruction budget exceeded");
    assert_int_equal(exit_of(b, err, sizeof err, 5000), 1);
    assert_string_equal(err, "instruction budget exceeded");
    /* the others keep running */
    send_cmd(c, "json", NULL);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
}

/* Short runs go unhooked (the watchdog gives a long run its count hook); with a budget below
   RL_LUA_LAZY_BUDGET every run is counted from its first instruction. Both kinds still end a
   runaway loop, in the instance's own coroutine and in one it made. */
static void test_short_runs_unhooked(void **state)
{
    (void)state;
    char c[RL_PID_MAX], a[RL_PID_MAX], err[256];
    spawn(1, c);
    send_cmd(c, "json", NULL);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
    rl_lua_inst *I = rl_lua_inst_of(c);
    assert_non_null(I);
    assert_int_equal(lua_gethookmask(I->co), budget_value >= 1000000 ? 0 : LUA_MASKCOUNT);
    spawn(1, a);
    send_cmd(a, "spin", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 5000), 1);
    assert_string_equal(err, "instruction budget exceeded");
    /* a run longer than the watchdog's period but under the budget ends normally: once hooked
       it is counted a step at a time (4 ms of a loop around os.clock(): a few 100,000
       instructions) */
    send_cmd(c, "busy", "\"ms\":4");
    r = reply_json(1);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
    send_cmd(c, "json", NULL); /* c still answers, and is still unhooked */
    r = reply_json(2);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
    assert_int_equal(lua_gethookmask(I->co), budget_value >= 1000000 ? 0 : LUA_MASKCOUNT);
}

static int teardown(void **state);

static int setup_small_budget(void **state)
{
    budget_value = 200000;
    return setup(state);
}

static int teardown_small_budget(void **state)
{
    budget_value = 1000000;
    return teardown(state);
}

/* A long run is preempted every RL_LUA_PREEMPT instructions: another instance answers while the
   spinning one still runs, and the spinner's count goes on across its slices (it still dies). */
static void test_preempted(void **state)
{
    (void)state;
    char a[RL_PID_MAX], c[RL_PID_MAX], err[256];
    spawn(1, a);
    spawn(1, c);
    send_cmd(a, "spin", NULL);
    send_cmd(c, "json", NULL);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
    assert_true(rec_find(&parent, "pid.exit", a, 0) < 0); /* a is not through its budget yet */
    assert_int_equal(exit_of(a, err, sizeof err, 5000), 1);
    assert_string_equal(err, "instruction budget exceeded");
}

static void test_sleep_and_select(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    spawn(1, a);
    spawn(1, b);
    send_cmd(a, "sleep", "\"ms\":40");
    send_cmd(b, "select2", NULL);
    int got_a = 0, got_b = 0;
    for (int k = 0; k < 2; k++) {
        cJSON *r = reply_json(k);
        if (cJSON_GetObjectItem(r, "elapsed")) {
            got_a = 1;
            assert_true(cJSON_GetObjectItem(r, "elapsed")->valuedouble >= 44e6); /* ns */
        } else {
            got_b = 1;
            const char *keys[] = {"c1", "ok1", "c2", "d", "sent", "ok6", "stopped", "timer",
                                  "nested", "nested_slept", "nested_sort", "same", "mixed", "bad", "events_len", "close2",
                                  "send_closed", "send_true"};
            for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
                if (!jtrue(r, keys[i]))
                    fail_msg("select check %s failed: %s", keys[i], cJSON_PrintUnformatted(r));
            assert_false(jtrue(r, "ok5"));
            assert_string_equal(cJSON_GetObjectItem(r, "v1")->valuestring, "from b");
            assert_int_equal(cJSON_GetObjectItem(r, "v4")->valueint, 42);
            assert_int_equal(cJSON_GetObjectItem(r, "sum")->valueint, 10);
        }
        cJSON_Delete(r);
    }
    assert_true(got_a && got_b);
}

/* Durations are integers of nanoseconds, as on the platform; strings work everywhere. */
static void test_durations(void **state)
{
    (void)state;
    char a[RL_PID_MAX];
    spawn(1, a);
    send_cmd(a, "durations", NULL);
    cJSON *r = reply_json(0);
    const char *keys[] = {"units", "parse", "accessors", "sub_int", "add", "ticker_min"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!jtrue(r, keys[i]))
            fail_msg("durations check %s failed: %s", keys[i], cJSON_PrintUnformatted(r));
    /* time.sleep(200000000) slept 0.2 s (not 2.3 days), then '150ms' */
    double e1 = cJSON_GetObjectItem(r, "e1")->valuedouble;
    double e2 = cJSON_GetObjectItem(r, "e2")->valuedouble;
    double e3 = cJSON_GetObjectItem(r, "e3")->valuedouble;
    /* (the loop's clock is read once per iteration: a timer may end a few ms early) */
    assert_true(e1 >= 190e6 && e1 < 1000e6);
    assert_true(e2 - e1 >= 140e6 && e2 < 2000e6);
    if (!(e3 >= 70e6 && e3 < 1000e6)) /* after 30ms + timer 30ms + two 10ms ticks */
        fail_msg("timers took %.0f ns", e3);
    cJSON_Delete(r);
}

static void test_cancel(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX], err[256];
    spawn(1, a);
    spawn(1, b);
    assert_int_equal(rl_cancel(NULL, a, 5000), 0);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "cancelled"));
    assert_true(cJSON_GetObjectItem(r, "deadline")->valuedouble == 5e9); /* a duration: ns */
    assert_string_equal(cJSON_GetObjectItem(r, "reason")->valuestring, "cancelled");
    assert_null(cJSON_GetObjectItem(r, "from")); /* the runtime cancelled it */
    cJSON_Delete(r);
    assert_int_equal(exit_of(a, err, sizeof err, 3000), 0);
    /* One that ignores CANCEL is killed at the deadline. */
    send_cmd(b, "ignore_cancel", NULL);
    wait_for("never", 1, 20);
    uint64_t t0 = uv_now(&loop);
    assert_int_equal(rl_cancel(NULL, b, 50), 0);
    assert_int_equal(exit_of(b, err, sizeof err, 3000), 1);
    assert_string_equal(err, "cancelled");
    assert_true(uv_now(&loop) - t0 >= 45);
}

static void test_json_registry_spawn(void **state)
{
    (void)state;
    char a[RL_PID_MAX], err[256];
    spawn(1, a);
    send_cmd(a, "json", NULL);
    cJSON *r = reply_json(0);
    if (!jtrue(r, "ok"))
        fail_msg("json: %s", parent.payload[0]);
    cJSON_Delete(r);
    send_cmd(a, "registry", NULL);
    r = reply_json(1);
    assert_string_equal(cJSON_GetObjectItem(r, "e")->valuestring, "cannot send to @ topics");
    assert_string_equal(cJSON_GetObjectItem(r, "e2")->valuestring, "process not found");
    cJSON_Delete(r);
    send_cmd(a, "spawn", NULL);
    r = reply_json(2);
    assert_string_equal(cJSON_GetObjectItem(r, "kind")->valuestring, "pid.exit");
    assert_true(jtrue(r, "from_ok"));
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err")->valuestring, "boom"));
    cJSON_Delete(r);
    assert_int_equal(exit_of(a, err, sizeof err, 100), -1); /* still alive */
}

/* process.id, unmonitor, CANCEL's reason and from, `return nil, err` as an error exit. */
static void test_process_api(void **state)
{
    (void)state;
    char a[RL_PID_MAX], err[256];
    spawn(1, a);
    send_cmd(a, "procapi", NULL);
    cJSON *mine = NULL, *c3 = NULL;
    for (int k = 0; k < 2; k++) {
        cJSON *r = reply_json(k);
        if (cJSON_GetObjectItem(r, "cancelled"))
            c3 = r;
        else
            mine = r;
    }
    assert_non_null(mine);
    assert_non_null(c3);
    const char *keys[] = {"id_ok", "un", "c2", "c3", "empty"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!jtrue(mine, keys[i]))
            fail_msg("process check %s failed: %s", keys[i], cJSON_PrintUnformatted(mine));
    assert_string_equal(cJSON_GetObjectItem(mine, "err")->valuestring, "bad thing");
    assert_string_equal(cJSON_GetObjectItem(c3, "reason")->valuestring, "shutting down");
    assert_string_equal(cJSON_GetObjectItem(c3, "from")->valuestring, a);
    assert_string_equal(cJSON_GetObjectItem(mine, "me")->valuestring, a);
    cJSON_Delete(mine);
    cJSON_Delete(c3);
    assert_int_equal(exit_of(a, err, sizeof err, 100), -1); /* still alive */
    /* a hub's plugin whose run() returns nil, err exits with that error */
    spawn(1, a);
    send_cmd(a, "nilerr", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 3000), 1);
    assert_string_equal(err, "bad thing");
}

static void test_mailbox_bound(void **state)
{
    (void)state;
    char a[RL_PID_MAX];
    spawn(1, a);
    send_cmd(a, "flood", "\"ms\":2000"); /* sleeps: messages pile up unreceived */
    wait_for("never", 1, 30);
    int ok = 0, rc = 0;
    for (int i = 0; i < 200 && rc == 0; i++) {
        rc = send_app(a, "noop", "{}");
        if (rc == 0)
            ok++;
        uv_run(&loop, UV_RUN_NOWAIT); /* the scheduler hands them to the instance's inbox */
    }
    assert_int_equal(rc, -EAGAIN);
    assert_true(ok >= 60 && ok <= 64);
}

static void test_memory_cap(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX], err[256];
    spawn(1, a);
    spawn(1, b);
    send_cmd(a, "hog", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 10000), 1);
    assert_string_equal(err, "not enough memory");
    /* the hog's tens of MiB of small strings went back to the free lists only up to their bound */
    assert_true(rl_lua_pool_bytes() <= RL_LUA_POOL_CAP);
    send_cmd(b, "json", NULL); /* the node and the other instance survive */
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
}

static int setup_small(void **state)
{
    (void)state;
    return setup_with(4u << 20, 64);
}

static void test_close_with_live_instances(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX], c[RL_PID_MAX];
    spawn(1, a);
    spawn(1, b);
    spawn(0, c);
    send_cmd(a, "ignore_cancel", NULL); /* sleeping */
    send_cmd(b, "select2", NULL);       /* timers and tickers */
    wait_for("never", 1, 10);
    /* teardown closes the host with all three alive */
}

static void test_syntax_error(void **state)
{
    (void)state;
    rl_lua_close();
    set_def(&defs[4], "bad_plugin", "app:bad_plugin", "bad_",
            write_tmp("bad.lua", "local x = 1\nlocal function (\n"));
    cfg.nplugins = 5;
    char err[512];
    assert_true(rl_lua_init(&cfg, err, sizeof err) < 0);
    assert_non_null(strstr(err, "test.yaml: entry bad_plugin: "));
    assert_non_null(strstr(err, "bad.lua:2:"));
    /* a missing source file */
    unlink(defs[4].source_path);
    assert_true(rl_lua_init(&cfg, err, sizeof err) < 0);
    assert_non_null(strstr(err, "entry bad_plugin: cannot read source"));
    cfg.nplugins = 4;
    assert_int_equal(rl_lua_init(&cfg, err, sizeof err), 0);
}

/* ---- the sandbox ------------------------------------------------------------------------ */

#define SANDBOX 3

/* One user's plugin cannot change what another's sees: no access path yields a library table. */
static void test_sandbox_readonly(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    spawn(SANDBOX, a);
    spawn(SANDBOX, b);
    send_cmd(a, "ro_attack", NULL);
    cJSON *r = reply_json(0);
    const char *wins = cJSON_GetObjectItem(r, "wins")->valuestring;
    if (wins[0])
        fail_msg("writes into shared tables succeeded: %s", wins);
    if (cJSON_GetObjectItem(r, "tried")->valueint < 90)
        fail_msg("too few attacks: %s", cJSON_PrintUnformatted(r));
    assert_true(jtrue(r, "reads")); /* reading through pairs/next/rawget still works */
    cJSON_Delete(r);
    send_cmd(b, "ro_check", NULL);
    r = reply_json(1);
    assert_true(jtrue(r, "ok"));
    cJSON_Delete(r);
}

/* Spawns one instance per command, sends it, and expects each to end with `reason`. */
static void expect_kills(const char *const *cmds, size_t n, const char *reason)
{
    char pids[16][RL_PID_MAX], err[256];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) {
        spawn(SANDBOX, pids[i]);
        send_cmd(pids[i], cmds[i], NULL);
    }
    for (size_t i = 0; i < n; i++) {
        if (exit_of(pids[i], err, sizeof err, 10000) != 1)
            fail_msg("%s: no crash", cmds[i]);
        if (strcmp(err, reason) != 0)
            fail_msg("%s: ended with '%s', not '%s'", cmds[i], err, reason);
    }
}

static int metric_value(const char *line)
{
    size_t len;
    char *text = rl_metrics_render(&len);
    const char *at = strstr(text, line);
    int v = at ? atoi(at + strlen(line)) : -1;
    free(text);
    return v;
}

/* The budget is final whoever catches the error, and C work on plugin input is charged. */
static void test_sandbox_budget_final(void **state)
{
    (void)state;
    static int registered;
    if (!registered++)
        rl_metrics_add_source(rl_lua_metrics);
    int before = metric_value("relay_plugin_kills_total{limit=\"instructions\"} ");
    static const char *const cmds[] = {"co_pcall",    "co_resume", "xpcall_loop",  "sort_cmp",
                                       "gsub_cb",     "tostring_mm", "index_mm",   "close_mm",
                                       "catastrophic", "plain_find", "rep_empty",  "move_far",
                                       "insert_front"};
    size_t n = sizeof cmds / sizeof cmds[0];
    expect_kills(cmds, n, "instruction budget exceeded");
    assert_int_equal(metric_value("relay_plugin_kills_total{limit=\"instructions\"} "),
                     before + (int)n);
    /* the host and other instances keep serving */
    char c[RL_PID_MAX];
    spawn(SANDBOX, c);
    send_cmd(c, "alive", NULL);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "alive"));
    cJSON_Delete(r);
    /* one backtracking call is cut at its step bound (find, gsub, a gmatch step) with an error
       the plugin may catch, and linear work on long subjects stays under it */
    send_cmd(c, "bomb_once", NULL);
    r = reply_json(1);
    assert_false(jtrue(r, "ok"));
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err")->valuestring, "pattern too complex"));
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err2")->valuestring, "pattern too complex"));
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err3")->valuestring, "pattern too complex"));
    assert_int_equal(cJSON_GetObjectItem(r, "words")->valueint, 2000);
    assert_true(jtrue(r, "trim"));
    cJSON_Delete(r);
}

static void test_sandbox_results(void **state)
{
    (void)state;
    static const char *const rep[] = {"rep_big"};
    expect_kills(rep, 1, "string.rep: result too large");
    static const char *const concat[] = {"concat_big"}; /* even inside pcall */
    expect_kills(concat, 1, "table.concat: result too large");
    char a[RL_PID_MAX];
    spawn(SANDBOX, a);
    send_cmd(a, "gc_mm", NULL);
    cJSON *r = reply_json(0);
    assert_true(jtrue(r, "refused"));
    assert_false(jtrue(r, "ran"));
    cJSON_Delete(r);
    send_cmd(a, "sort_big", NULL);
    r = reply_json(1);
    assert_true(jtrue(r, "sorted"));
    cJSON_Delete(r);
}

static int stock_pcall(lua_State *L)
{
    lua_pushnil(L);
    return 0;
}

/* Our matcher answers as Lua's on the common idioms and a few thousand generated cases; the
   trim idiom stays linear on a 30 KB message. */
static void test_sandbox_patterns(void **state)
{
    (void)state;
    lua_State *S = luaL_newstate();
    luaL_openlibs(S);
    assert_int_equal(luaL_loadbuffer(S, PATTERN_CASES, strlen(PATTERN_CASES), "=(load)"), LUA_OK);
    lua_pushcfunction(S, stock_pcall); /* the pause: nothing to yield to here */
    assert_int_equal(lua_pcall(S, 1, 1, 0), LUA_OK);
    const char *want = lua_tostring(S, -1);

    char pid[RL_PID_MAX];
    spawn(SANDBOX, pid);
    size_t need = rl_json_escape(NULL, 0, PATTERN_CASES, strlen(PATTERN_CASES));
    char *msg = malloc(need + 64);
    int k = snprintf(msg, need + 64, "{\"code\":");
    rl_json_escape(msg + k, need + 1, PATTERN_CASES, strlen(PATTERN_CASES));
    strcat(msg, "}");
    assert_int_equal(send_app(pid, "patterns", msg), 0);
    free(msg);
    cJSON *r = reply_json(0);
    const char *got = cJSON_GetObjectItem(r, "out")->valuestring;
    if (strcmp(got, want) != 0) {
        const char *g = got, *w = want;
        while (*g && *g == *w)
            g++, w++;
        while (g > got && g[-1] != '\n')
            g--, w--;
        const char *eol = strchr(g, '\n');
        fail_msg("pattern results differ from Lua's:\n ours: %.*s\nstock: %.*s", (int)(eol ? eol - g : 300), g,
                 (int)(eol ? eol - g + 40 : 300), w);
    }
    assert_true(strlen(got) > 10000);
    cJSON_Delete(r);
    lua_close(S);

    /* " x" + 30,000 spaces + "y ": quadratic for Lua's matcher (4 s), linear here */
    size_t big = 30000;
    char *s = malloc(big + 128);
    int at = snprintf(s, big + 128, "{\"s\":\" x");
    memset(s + at, ' ', big);
    snprintf(s + at + big, 128, "y \"}");
    assert_int_equal(send_app(pid, "idioms", s), 0);
    r = reply_json(1);
    const char *trimmed = cJSON_GetObjectItem(r, "trimmed")->valuestring;
    assert_int_equal(strlen(trimmed), big + 2);
    assert_true(trimmed[0] == 'x' && trimmed[big + 1] == 'y');
    assert_int_equal(cJSON_GetObjectItem(r, "spaces")->valueint, 3);
    assert_int_equal(cJSON_GetObjectItem(r, "words")->valueint, 2);
    assert_string_equal(cJSON_GetObjectItem(r, "small")->valuestring, "a b");
    double ms = cJSON_GetObjectItem(r, "ms")->valuedouble;
    if (ms > 200)
        fail_msg("idioms on 30 KB took %.0f ms", ms);
    cJSON_Delete(r);
    free(s);
}

/* Children, timers and channels are bounded per instance; children end with their parent. */
static void test_sandbox_bounds(void **state)
{
    (void)state;
    char a[RL_PID_MAX], err[256];
    spawn(SANDBOX, a);
    send_cmd(a, "children", NULL);
    cJSON *r = reply_json(0);
    assert_int_equal(cJSON_GetObjectItem(r, "n")->valueint, (int)cfg.plugin_max_children);
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err")->valuestring, "too many children"));
    cJSON_Delete(r);
    assert_int_equal(rl_proc_count('p'), 1 + (int)cfg.plugin_max_children);
    const rl_owner_use *u = rl_owner_use_of(parent.proc.owner); /* alice's whole tree */
    assert_non_null(u);
    assert_int_equal(u->procs, 1 + (int)cfg.plugin_max_children);
    send_cmd(a, "timers", NULL);
    r = reply_json(1);
    assert_int_equal(cJSON_GetObjectItem(r, "n")->valueint, (int)cfg.plugin_max_timers);
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err")->valuestring, "too many timers"));
    assert_false(jtrue(r, "after_ok"));
    assert_true(jtrue(r, "again")); /* a stopped ticker gives its place back */
    cJSON_Delete(r);
    send_cmd(a, "channels", NULL);
    r = reply_json(2);
    assert_int_equal(cJSON_GetObjectItem(r, "n")->valueint, (int)cfg.plugin_max_channels);
    assert_non_null(strstr(cJSON_GetObjectItem(r, "err")->valuestring, "too many channels"));
    cJSON_Delete(r);
    /* the children end with their parent */
    assert_true(u->chans >= cfg.plugin_max_channels);
    send_cmd(a, "die", NULL);
    assert_int_equal(exit_of(a, err, sizeof err, 3000), 1);
    wait_for("never", 1, 20);
    assert_int_equal(rl_proc_count('p'), 0);
    /* every count went back with the instances (channels with their collection) */
    assert_int_equal(u->procs, 0);
    assert_int_equal(u->timers, 0);
    lua_gc(rl_lua_g.L, LUA_GCCOLLECT);
    assert_int_equal(u->chans, 0);
}

/* A child that spawns children: the whole tree goes when its root does. */
static void test_sandbox_children_tree(void **state)
{
    (void)state;
    char a[RL_PID_MAX];
    spawn(SANDBOX, a);
    send_cmd(a, "children", "\"max\":3");
    cJSON *r = reply_json(0);
    assert_int_equal(cJSON_GetObjectItem(r, "n")->valueint, 3);
    cJSON_Delete(r);
    assert_int_equal(rl_proc_count('p'), 4);
    assert_int_equal(rl_cancel(NULL, a, 0), 0); /* as the hub does when the user is gone */
    wait_for("never", 1, 20);
    assert_int_equal(rl_proc_count('p'), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spec_example, setup, teardown),
        cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_and_return, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_runs_unhooked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_runs_unhooked, setup_small_budget, teardown_small_budget),
        cmocka_unit_test_setup_teardown(test_preempted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sleep_and_select, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_api, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_registry_spawn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mailbox_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_cap, setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_live_instances, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_readonly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_budget_final, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_patterns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_children_tree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_released_without_finalizer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
