/* Unit tests for the platform-fidelity parts of the Lua host (plugins/rl_lua_fid.c and the
 * process.spawn* of rl_lua_proc.c): a plugin on a real loop spawns plain process.lua entries,
 * imports library.lua entries, calls function.lua entries and uses errors/env/ctx; every check
 * is computed in Lua and sent to a recording parent as one JSON object of booleans. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_config.h"
#include "rl_lua.h"
#include "rl_proc.h"

#define REC_MAX 64

typedef struct rec {
    rl_proc proc;
    int n;
    char *topic[REC_MAX], *payload[REC_MAX];
    int freed;
} rec;

static rec parent;
static uv_loop_t loop;
static uv_timer_t tick;
static rl_config cfg;
static rl_plugin_def plugins[2], entries[5];
static rl_env_var vars[2];
static char tmpdir[64];

static void rec_handle(rl_proc *p, rl_msg *m)
{
    rec *r = (rec *)p;
    if (r->n < REC_MAX && m->topic == RL_T_PID_EXIT) {
        r->topic[r->n] = strdup("pid.exit");
        r->payload[r->n] = strdup(m->ctl.exit.error ? m->ctl.exit.error->data : "");
        r->n++;
    } else if (r->n < REC_MAX && m->body) {
        size_t n;
        const char *t = rl_msg_topic_name(m, &n);
        r->topic[r->n] = strndup(t, n);
        r->payload[r->n] = strndup(m->body->data, m->body->len);
        r->n++;
    }
    rl_msg_free(m);
}

static void rec_free(rl_proc *p) { ((rec *)p)->freed = 1; }
static const rl_proc_ops rec_ops = {.kind = "rec", .letter = 'r', .handle = rec_handle, .free = rec_free};

/* The plugin: one command per area, each replies {check = bool, ...}. */
static const char fid_src[] =
    "local time = require('time')\n"
    "local env, funcs, ctx = require('env'), require('funcs'), require('ctx')\n"
    "local lib = require('lib')\n"
    "type Reply = {[string]: boolean}\n"
    "local hub: string\n"
    "local function reply(v: Reply) process.send(hub, 'reply', v) end\n"
    "local function from(pid: string, ms: integer): {[string]: any}\n"
    "  local ev, t = process.events(), time.after(ms * time.MILLISECOND)\n"
    "  local got = {}\n"
    "  while true do\n"
    "    local r = channel.select({ev:case_receive(), t:case_receive()})\n"
    "    if r.channel == t then return got end\n"
    "    if r.value.from == pid then got[r.value.kind] = r.value end\n"
    "  end\n"
    "end\n"
    "local cmds = {}\n"
    "function cmds.spawn()\n"
    "  local r: Reply = {}\n"
    "  local p = process.spawn_monitored('app:child', 'h', 'value', 2, nil, {x = 3})\n"
    "  local g = from(p, 200)\n"
    "  local v = g['pid.exit'] and g['pid.exit'].result.value\n"
    "  r.args = v and v.b == 2 and v.c_nil == true and v.d == 3 and v.n == 4\n"
    "  r.no_err = g['pid.exit'] and g['pid.exit'].result.error == nil\n"
    "  p = process.spawn_monitored('child', 'h', 'nilerr')\n"
    "  g = from(p, 200)\n"
    "  r.nilerr = g['pid.exit'].result.error == 'bad' and g['pid.exit'].result.value == nil\n"
    "  p = process.spawn_monitored('app:child', 'h')\n"
    "  g = from(p, 200)\n"
    "  r.noargs = g['pid.exit'].result.value == 0\n"
    "  p = process.spawn_linked('app:child', 'h', 'crash')\n"
    "  g = from(p, 200)\n"
    "  r.link_crash = g['pid.link.down'] ~= nil and g['pid.exit'] == nil\n"
    "    and g['pid.link.down'].result.error == 'boom'\n"
    "  p = process.spawn_linked('app:child', 'h', 'value', 1, nil, {x = 1})\n"
    "  g = from(p, 200)\n"
    "  r.link_ok = next(g) == nil\n"
    "  p = process.spawn_linked_monitored('app:child', 'h', 'crash')\n"
    "  g = from(p, 200)\n"
    "  r.link_mon = g['pid.link.down'] ~= nil and g['pid.exit'] ~= nil\n"
    "  p = process.spawn_linked('app:child', 'h', 'wait')\n"
    "  r.unlink = process.unlink(p) == true\n"
    "  process.terminate(p)\n"
    "  r.unlinked = next(from(p, 200)) == nil\n"
    "  p = process.spawn('app:child', 'h', 'wait')\n"
    "  process.link(p)\n"
    "  process.terminate(p)\n"
    "  g = from(p, 200)\n"
    "  r.link_later = g['pid.link.down'] ~= nil and g['pid.exit'] == nil\n"
    "  local bad, why = process.spawn('app:lib', 'h')\n"
    "  r.not_a_process = bad == nil and why == 'unknown process id'\n"
    "  local many = {}\n"
    "  for i = 1, 65 do many[i] = i end\n"
    "  bad, why = process.spawn('app:child', 'h', table.unpack(many))\n"
    "  r.too_many = bad == nil and why:find('at most 64') ~= nil\n"
    "  bad, why = process.spawn('app:child', 'h', function() end)\n"
    "  r.bad_arg = bad == nil and why:find('spawn argument 1') ~= nil\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.context()\n"
    "  local r: Reply = {}\n"
    "  local s0 = process.with_context({a = 1})\n"
    "  local s1 = s0:with_context({b = 'two'}):with_name('kid'):with_message('m1', 'x', nil, 3)\n"
    "  local p = s1:spawn_monitored('app:child', 'h', 'ctx')\n"
    "  local g = from(p, 200)\n"
    "  local v = g['pid.exit'] and g['pid.exit'].result.value or {}\n"
    "  r.values = v.a == 1 and v.b == 'two' and v.all_n == 2 and v.missing == 'NOT_FOUND'\n"
    "  r.message = v.topic == 'm1' and v.p == 'x'\n"
    "  r.named = v.named == true\n"
    "  r.immutable = s0.ctx_.b == nil\n"
    "  r.bad = not pcall(process.with_context, 5) and not pcall(process.with_context, {[1] = 2})\n"
    "  local h = process.with_context({})\n"
    "  r.chain = h:with_actor(nil) == h and h:with_scope(nil) == h and h:with_options({}) == h\n"
    "  local all = ctx.all()\n"
    "  r.own = next(all) == nil and select(2, ctx.get('a')):kind() == 'NOT_FOUND'\n"
    "    and select(2, ctx.get('')):kind() == 'INVALID'\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.errors()\n"
    "  local r: Reply = {}\n"
    "  local e = errors.new({message = 'm', kind = errors.CONFLICT, retryable = 1, details = {k = 'v'}})\n"
    "  r.fields = e:kind() == 'CONFLICT' and e:message() == 'm' and e:retryable() == true\n"
    "    and e:details().k == 'v' and tostring(e) == 'm' and e:stack():find('traceback') ~= nil\n"
    "  local s = errors.new('plain')\n"
    "  r.plain = s:kind() == errors.UNKNOWN and s:retryable() == nil and s:details() == nil\n"
    "  r.is = errors.is(e, 'CONFLICT') and not errors.is(e, errors.INVALID)\n"
    "    and errors.is('text', errors.UNKNOWN) and not errors.is(nil, errors.UNKNOWN)\n"
    "  local w = errors.wrap(e, 'ctx')\n"
    "  r.wrap = w:message() == 'ctx: m' and w:kind() == 'CONFLICT' and w:details().k == 'v'\n"
    "    and errors.wrap('raw', 'c'):message() == 'c: raw' and errors.wrap(nil, 'x') == nil\n"
    "  r.bad = not pcall(errors.new, 5) and not pcall(errors.new, {kind = 'X'})\n"
    "    and not pcall(errors.new, {message = 'm', kind = 3})\n"
    "  local cs = errors.call_stack(e)\n"
    "  r.stack = cs.thread == 'main' and #cs.frames >= 1 and type(cs.frames[1].line) == 'number'\n"
    "    and errors.call_stack('x') == nil\n"
    "  local kinds = 0\n"
    "  for _, k in ipairs({'UNKNOWN', 'INVALID', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',\n"
    "    'UNAVAILABLE', 'INTERNAL', 'CANCELED', 'CONFLICT', 'TIMEOUT', 'RATE_LIMITED'}) do\n"
    "    if errors[k] == k then kinds = kinds + 1 end\n"
    "  end\n"
    "  r.kinds = kinds == 11 and require('errors') == errors\n"
    "  r.readonly = not pcall(function() errors.new = nil end)\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.env()\n"
    "  local r: Reply = {}\n"
    "  r.get = env.get('RL_FID_TEST') == 'from-os' and env.get('app:fid_test') == 'from-os'\n"
    "  r.default = env.get('RL_FID_DEFAULT') == 'dflt'\n"
    "  local v, e = env.get('PATH')\n"
    "  r.undeclared = v == nil and e:kind() == 'NOT_FOUND'\n"
    "  r.empty = select(2, env.get('')):kind() == 'INVALID'\n"
    "  local ok, se = env.set('RL_FID_TEST', 'x')\n"
    "  r.set = ok == false and se:kind() == 'PERMISSION_DENIED'\n"
    "  local all = env.get_all()\n"
    "  r.all = all.RL_FID_TEST == 'from-os' and all.RL_FID_DEFAULT == 'dflt' and all.PATH == nil\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.funcs()\n"
    "  local r: Reply = {}\n"
    "  r.call = funcs.call('app:fn', 20, 2) == 22 and funcs.new():call('app:fn', 1, 1) == 2\n"
    "  local v, e = funcs.call('app:fn', 'neg')\n"
    "  r.err = v == nil and e:kind() == 'INVALID'\n"
    "  v, e = funcs.call('app:fn', 'raise')\n"
    "  r.raise = v == nil and e:kind() == 'INTERNAL' and e:message():find('kaboom') ~= nil\n"
    "  v, e = funcs.call('app:fn', 'str')\n"
    "  r.str = v == nil and e:kind() == 'UNKNOWN' and e:message() == 'plain'\n"
    "  r.missing = select(2, funcs.call('app:nope')):kind() == 'NOT_FOUND'\n"
    "    and select(2, funcs.call('app:child')):kind() == 'NOT_FOUND'\n"
    "    and select(2, funcs.call('fn')):kind() == 'INVALID'\n"
    "    and select(2, funcs.call('')):kind() == 'INVALID'\n"
    "  r.fresh = funcs.call('app:fn', 'count') == 1 and funcs.call('app:fn', 'count') == 1\n"
    "  local f = funcs.async('app:fn', 20, 2)\n"
    "  local p = f:response():receive()\n"
    "  r.async = p:data() == 22 and f:is_complete()\n"
    "    and select(2, funcs.async('app:nope')):kind() == 'NOT_FOUND'\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.imports(p)\n"
    "  local r: Reply = {}\n"
    "  r.same = require('lib') == lib\n"
    "  r.n = lib.bump() == p.want\n"
    "  r.nested = lib.helper_name() == 'helper'\n"
    "  r.unknown = not pcall(require, 'nothing_here')\n"
    "  r.cycle = select(2, pcall(require, 'cyc')):find('import cycle') ~= nil\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.tasks()\n"
    "  local r: Reply = {}\n"
    "  local ch, order = channel.new(), {}\n"
    "  r.ret = coroutine.spawn(function(a: integer, b: integer)\n"
    "    time.sleep('20ms')\n"
    "    order[#order + 1] = 'task'\n"
    "    ch:send(a + b)\n"
    "  end, 1, 2) == true\n"
    "  order[#order + 1] = 'main'\n"
    "  r.value = ch:receive() == 3\n"
    "  r.order = order[1] == 'main' and order[2] == 'task'\n"
    "  local out = channel.new(10)\n"
    "  for i = 1, 10 do coroutine.spawn(function() time.sleep((11 - i) .. 'ms'); out:send(i) end) end\n"
    "  local sum, first = 0, nil\n"
    "  for i = 1, 10 do local v = out:receive(); first = first or v; sum = sum + v end\n"
    "  r.fan = sum == 55 and first == 10\n"
    "  local idc = channel.new(1)\n"
    "  coroutine.spawn(function() idc:send(process.pid()) end)\n"
    "  r.pid = idc:receive() == process.pid()\n"
    "  r.bad = not pcall(coroutine.spawn, 5)\n"
    "  local sel = channel.new()\n"
    "  coroutine.spawn(function()\n"
    "    local t = time.after('5ms')\n"
    "    local x = channel.select({sel:case_receive(), t:case_receive()})\n"
    "    sel:send(x.channel == t)\n"
    "  end)\n"
    "  time.sleep('30ms')\n"
    "  r.select = sel:receive() == true\n"
    "  local pch = channel.new()\n"
    "  coroutine.spawn(function() time.sleep('2ms'); pch:send('p') end)\n"
    "  r.plain = coroutine.wrap(function() return pch:receive() end)() == 'p'\n"
    /* the platform's channel doc example: two spawned senders on unbuffered channels, a
       spawned handler selecting both; and a producer/consumer pair through a buffered one */
    "  local ch1, ch2, got = channel.new(), channel.new(), {}\n"
    "  local done = channel.new(1)\n"
    "  coroutine.spawn(function()\n"
    "    coroutine.spawn(function() ch1:send('message1') end)\n"
    "    coroutine.spawn(function() ch2:send('message2') end)\n"
    "    for i = 1, 2 do got[#got + 1] = channel.select({ch1:case_receive(), ch2:case_receive()}).value end\n"
    "    done:send(true)\n"
    "  end)\n"
    "  done:receive()\n"
    "  table.sort(got)\n"
    "  r.doc_select = got[1] == 'message1' and got[2] == 'message2'\n"
    "  local pc, items = channel.new(2), {}\n"
    "  local fin = channel.new(1)\n"
    "  coroutine.spawn(function() for i = 1, 5 do pc:send('item' .. i) end; pc:close() end)\n"
    "  coroutine.spawn(function()\n"
    "    while true do local v, ok = pc:receive(); if not ok then break end; items[#items + 1] = v end\n"
    "    fin:send(#items)\n"
    "  end)\n"
    "  r.doc_pc = fin:receive() == 5 and items[5] == 'item5'\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.task_crash() coroutine.spawn(function() error('task boom', 0) end); time.sleep('2s') end\n"
    "function cmds.task_spin()\n"
    "  coroutine.spawn(function() while true do pcall(function() while true do end end) end end)\n"
    "  time.sleep('2s')\n"
    "end\n"
    "function cmds.task_forever() for i = 1, 3 do coroutine.spawn(function() time.sleep('1h') end) end\n"
    "  coroutine.spawn(function() process.inbox():receive() end)\n"
    "  reply({spawned = true})\n"
    "end\n"
    "function cmds.task_terminate() coroutine.spawn(function() process.terminate(process.pid()) end)\n"
    "  time.sleep('2s')\n"
    "end\n"
    "function cmds.listen()\n"
    "  local r: Reply = {}\n"
    "  local me = process.pid()\n"
    "  local ch, chm = process.listen('note'), process.listen('memo', {message = true})\n"
    "  process.send(me, 'note', {n = 1}); process.send(me, 'memo', 'hello'); process.send(me, 'other', {})\n"
    "  local v, ok = ch:receive()\n"
    "  r.data = ok == true and v.n == 1\n"
    "  local m = chm:receive()\n"
    "  r.message = m:topic() == 'memo' and m:payload():data() == 'hello' and m:from() == me\n"
    "  r.inbox = process.inbox():receive():topic() == 'other'\n"
    "  r.dup = not pcall(process.listen, 'note')\n"
    "  r.bad = not pcall(process.listen, '@x') and not pcall(process.listen, '')\n"
    "    and not pcall(process.listen, 'y', 5)\n"
    "  process.send(me, 'note', {n = 2})\n"
    "  time.sleep('10ms')\n"
    "  r.unlisten = process.unlisten(ch) == true and process.unlisten(ch) == false\n"
    "    and process.unlisten({}) == false\n"
    "  local v2, ok2 = ch:receive()\n"
    "  local v3, ok3 = ch:receive()\n"
    "  r.drained = ok2 == true and v2.n == 2 and ok3 == false and v3 == nil\n"
    "  process.send(me, 'note', {n = 3})\n"
    "  r.back = process.inbox():receive():topic() == 'note'\n"
    "  local many = true\n"
    "  for i = 1, 63 do many = many and pcall(process.listen, 't' .. i) end\n"
    "  r.bound = many and not pcall(process.listen, 'one_more')\n"
    "  reply(r)\n"
    "end\n"
    "function cmds.hog()\n"
    "  local t = {}\n"
    "  for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n"
    "end\n"
    "function cmds.hold()\n"
    "  reply({holding = true})\n"
    "  local held, inbox = {}, process.inbox()\n"
    "  while true do held[#held + 1] = inbox:receive() end\n"
    "end\n"
    "function cmds.config(p)\n"
    "  local c = p.config\n"
    "  reply({fields = c.message_queue_size == 15 and c.gc_check_interval == '48s'\n"
    "    and c.heartbeat_interval == '24s' and c.user_hub_host == 'app:processes'})\n"
    "end\n"
    "local function run(args)\n"
    "  hub = args.user_hub_pid\n"
    "  local inbox = process.inbox()\n"
    "  while true do\n"
    "    local msg = inbox:receive()\n"
    "    local d = msg:payload():data()\n"
    "    d.config = args.config\n"
    "    cmds[msg:topic()](d)\n"
    "  end\n"
    "end\n"
    "return {run = run}\n";

static const char child_src[] =
    "local ctx = require('ctx')\n"
    "local function run(mode: string?, b: integer?, c: any, d: {x: integer}?): any\n"
    "  if mode == nil then return 0 end\n"
    "  if mode == 'value' then\n"
    "    return {b = b, c_nil = c == nil, d = d.x, n = select('#', mode, b, c, d)}\n"
    "  elseif mode == 'nilerr' then return nil, 'bad'\n"
    "  elseif mode == 'crash' then error('boom', 0)\n"
    "  elseif mode == 'wait' then process.inbox():receive(); return 'woke'\n"
    "  elseif mode == 'ctx' then\n"
    "    local m = process.inbox():receive()\n"
    "    local n = 0\n"
    "    for _ in pairs(ctx.all()) do n = n + 1 end\n"
    "    return {a = ctx.get('a'), b = ctx.get('b'), all_n = n, topic = m:topic(),\n"
    "      p = m:payload():data(), missing = select(2, ctx.get('zz')):kind(),\n"
    "      named = process.registry.lookup('kid') == process.pid()}\n"
    "  end\n"
    "end\n"
    "return {run = run}\n";

static const char lib_src[] =
    "local helper = require('helper')\n"
    "local n: integer = 0\n"
    "local M = {}\n"
    "function M.bump(): integer n = n + 1; return n end\n"
    "function M.helper_name(): string return helper.name end\n"
    "return M\n";

static const char helper_src[] = "name = 'helper'\n"; /* its globals are the module */

static const char cyc_src[] = "local again = require('cyc')\nreturn {}\n";

static const char fn_src[] =
    "local calls = 0\n"
    "local function main(a: any, b: number?): (number?, any)\n"
    "  calls = calls + 1\n"
    "  if a == 'neg' then return nil, errors.new({message = 'negative', kind = errors.INVALID}) end\n"
    "  if a == 'raise' then error('kaboom') end\n"
    "  if a == 'str' then return nil, 'plain' end\n"
    "  if a == 'count' then return calls end\n"
    "  return a + b\n"
    "end\n"
    "return {main = main}\n";

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

static void def(rl_plugin_def *d, int kind, const char *name, const char *method, const char *src)
{
    char id[64], file[64];
    snprintf(id, sizeof id, "app:%s", name);
    snprintf(file, sizeof file, "%s.lua", name);
    d->lua_kind = kind;
    d->name = strdup(name);
    d->id = strdup(id);
    d->method = strdup(method);
    d->source_path = write_tmp(file, src);
}

static void import(rl_plugin_def *d, const char *name, const char *id)
{
    d->import_names = realloc(d->import_names, (d->nimports + 1) * sizeof(char *));
    d->import_ids = realloc(d->import_ids, (d->nimports + 1) * sizeof(char *));
    d->import_names[d->nimports] = strdup(name);
    d->import_ids[d->nimports++] = strdup(id);
}

static void tick_cb(uv_timer_t *t) { (void)t; }

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rl_lua_fid_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    uv_loop_init(&loop);
    uv_timer_init(&loop, &tick);
    if (rl_node_init(&loop, "t1") < 0)
        return -1;
    rl_config_defaults(&cfg);
    free(cfg.path);
    cfg.path = strdup("test.yaml");
    cfg.max_connections_per_user = 3;
    cfg.queue_multiplier = 5;
    cfg.user_hub_inactivity_timeout_ms = 120000;
    free(cfg.application_host);
    cfg.application_host = strdup("app:processes");
    def(&plugins[0], RL_LUA_ENTRY_PLUGIN, "fid", "run", fid_src);
    plugins[0].prefix = strdup("fid_");
    import(&plugins[0], "lib", "app:lib");
    import(&plugins[0], "cyc", "app:cyc");
    def(&entries[0], RL_LUA_ENTRY_PROCESS, "child", "run", child_src);
    def(&entries[1], RL_LUA_ENTRY_LIBRARY, "lib", "", lib_src);
    import(&entries[1], "helper", "app:helper");
    def(&entries[2], RL_LUA_ENTRY_LIBRARY, "helper", "", helper_src);
    def(&entries[3], RL_LUA_ENTRY_LIBRARY, "cyc", "", cyc_src);
    import(&entries[3], "cyc", "app:cyc");
    def(&entries[4], RL_LUA_ENTRY_FUNCTION, "fn", "main", fn_src);
    cfg.plugins = plugins;
    cfg.nplugins = 1;
    cfg.lua_entries = entries;
    cfg.nlua_entries = 5;
    setenv("RL_FID_TEST", "from-os", 1);
    vars[0] = (rl_env_var){strdup("app:fid_test"), strdup("RL_FID_TEST"), strdup("RL_FID_TEST"),
                           NULL, strdup("app:os"), 1};
    vars[1] = (rl_env_var){strdup("app:fid_default"), strdup("RL_FID_DEFAULT"),
                           strdup("RL_FID_DEFAULT"), strdup("dflt"), strdup("app:os"), 1};
    cfg.env_vars = vars;
    cfg.nenv_vars = 2;
    char err[512];
    if (rl_lua_init(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "init: %s\n", err);
        return -1;
    }
    memset(&parent, 0, sizeof parent);
    rl_owner *alice = rl_owner_get("alice", 5);
    int rc = rl_proc_start(&parent.proc, &rec_ops, 0, alice);
    rl_owner_unref(alice);
    return rc;
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
    for (int i = 0; i < parent.n; i++) {
        free(parent.topic[i]);
        free(parent.payload[i]);
    }
    parent.n = 0;
    for (size_t i = 0; i < cfg.nplugins; i++)
        unlink(cfg.plugins[i].source_path);
    for (size_t i = 0; i < cfg.nlua_entries; i++)
        unlink(cfg.lua_entries[i].source_path);
    /* rl_config_free frees the arrays it owns: give it heap copies' owners */
    rl_plugin_def *p = malloc(sizeof plugins), *e = malloc(sizeof entries);
    rl_env_var *v = malloc(sizeof vars);
    memcpy(p, plugins, sizeof plugins);
    memcpy(e, entries, sizeof entries);
    memcpy(v, vars, sizeof vars);
    cfg.plugins = p;
    cfg.lua_entries = e;
    cfg.env_vars = v;
    rl_config_free(&cfg);
    memset(plugins, 0, sizeof plugins);
    memset(entries, 0, sizeof entries);
    memset(vars, 0, sizeof vars);
    rmdir(tmpdir);
    return 0;
}

static void start(char pid[RL_PID_MAX])
{
    char err[256];
    rl_spawn_args a = {&plugins[0], parent.proc.owner, &parent.proc, NULL, &cfg};
    int rc = rl_lua_spawn(&a, pid, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "spawn: %s\n", err);
    assert_int_equal(rc, 0);
}

/* Sends cmd to pid and waits for the next reply; asserts every member of it is true. */
static void expect_all_true(const char *pid, const char *cmd, const char *extra)
{
    char payload[256];
    snprintf(payload, sizeof payload, "{\"x\":1%s%s}", extra ? "," : "", extra ? extra : "");
    int before = parent.n;
    rl_msg *m = rl_msg_new_data(RL_T_APP, cmd, strlen(cmd), payload, strlen(payload));
    assert_int_equal(rl_send(&parent.proc, pid, m), 0);
    uv_timer_start(&tick, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + 5000;
    while (parent.n == before && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    assert_true(parent.n > before);
    cJSON *j = cJSON_Parse(parent.payload[parent.n - 1]);
    assert_non_null(j);
    int members = 0;
    for (cJSON *it = j->child; it; it = it->next, members++)
        if (!cJSON_IsTrue(it))
            fail_msg("%s: %s is not true in %s", cmd, it->string, parent.payload[parent.n - 1]);
    assert_true(members > 0);
    cJSON_Delete(j);
}

static void test_spawn_exit_links(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "spawn", NULL);
}

static void test_with_context_and_ctx(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "context", NULL);
}

static void test_errors_module(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "errors", NULL);
}

static void test_env_module(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "env", NULL);
}

static void test_funcs_module(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "funcs", NULL);
}

static void test_imports_per_instance(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    start(a);
    start(b);
    expect_all_true(a, "imports", "\"want\":1");
    expect_all_true(a, "imports", "\"want\":2");
    expect_all_true(b, "imports", "\"want\":1"); /* b's library state is its own */
}

/* The exit error of pid's PID_EXIT ("" for a normal exit), or NULL if none within 3 s. */
static const char *exit_error(void)
{
    uv_timer_start(&tick, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + 3000;
    for (;;) {
        for (int i = 0; i < parent.n; i++)
            if (strcmp(parent.topic[i], "pid.exit") == 0) {
                uv_timer_stop(&tick);
                return parent.payload[i];
            }
        if (uv_now(&loop) >= end)
            break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&tick);
    return NULL;
}

static void send_only(const char *pid, const char *cmd)
{
    rl_msg *m = rl_msg_new_data(RL_T_APP, cmd, strlen(cmd), "{}", 2);
    assert_int_equal(rl_send(&parent.proc, pid, m), 0);
}

static void test_coroutine_spawn(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "tasks", NULL);
    expect_all_true(pid, "task_forever", NULL);
    assert_int_equal(rl_proc_count('k'), 4);
    /* the instance's end ends its tasks */
    assert_int_equal(rl_cancel(NULL, pid, 0), 0);
    assert_non_null(exit_error());
    assert_int_equal(rl_proc_count('k'), 0);
    assert_int_equal(rl_proc_count('p'), 0);
}

static void test_task_error_ends_the_instance(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    send_only(pid, "task_crash");
    const char *e = exit_error();
    assert_non_null(e);
    assert_string_equal(e, "task boom");
    (void)0;
}

static void test_task_budget_and_terminate(void **state)
{
    (void)state;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    start(a);
    send_only(a, "task_spin");
    const char *e = exit_error();
    assert_non_null(e);
    assert_string_equal(e, "instruction budget exceeded");
    for (int i = 0; i < parent.n; i++) {
        free(parent.topic[i]);
        free(parent.payload[i]);
    }
    parent.n = 0;
    start(b);
    send_only(b, "task_terminate");
    e = exit_error();
    assert_non_null(e);
    assert_string_equal(e, "terminated");
    assert_int_equal(rl_proc_count('k'), 0);
}

static void free_recs(void)
{
    for (int i = 0; i < parent.n; i++) {
        free(parent.topic[i]);
        free(parent.payload[i]);
    }
    parent.n = 0;
}

/* One instance allocating past plugin_memory_limit dies with that reason; another one (and
   the host) goes on. */
static void test_instance_memory_cap(void **state)
{
    (void)state;
    cfg.plugin_memory_limit = 4u << 20;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    start(a);
    start(b);
    send_only(a, "hog");
    const char *e = exit_error();
    assert_non_null(e);
    assert_string_equal(e, "memory limit of the instance exceeded (plugin_memory_limit)");
    free_recs();
    expect_all_true(b, "errors", NULL); /* the other instance works */
}

/* Message bodies an instance holds count against its cap. */
static void test_instance_memory_counts_bodies(void **state)
{
    (void)state;
    cfg.plugin_memory_limit = 4u << 20;
    char a[RL_PID_MAX], b[RL_PID_MAX];
    start(a);
    start(b);
    expect_all_true(a, "hold", NULL);
    size_t before = rl_lua_memory();
    size_t big = 512u << 10;
    char *body = malloc(big + 3);
    body[0] = '"';
    memset(body + 1, 'x', big);
    body[big + 1] = '"';
    body[big + 2] = '\0';
    int sent = 0;
    for (int i = 0; i < 12; i++) {
        rl_msg *m = rl_msg_new_data(RL_T_APP, "big", 3, body, big + 2);
        if (rl_send(&parent.proc, a, m) < 0) {
            rl_msg_free(m);
            break;
        }
        sent++;
        uv_run(&loop, UV_RUN_NOWAIT);
        if (i == 2) /* bodies held are in the node's count too */
            assert_true(rl_lua_memory() >= before + 3 * big);
    }
    free(body);
    assert_true(sent >= 8);
    const char *e = exit_error();
    assert_non_null(e);
    assert_string_equal(e, "memory limit of the instance exceeded (plugin_memory_limit)");
    free_recs();
    expect_all_true(b, "errors", NULL);
}

static void test_listen(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "listen", NULL);
}

static void test_config_fields(void **state)
{
    (void)state;
    char pid[RL_PID_MAX];
    start(pid);
    expect_all_true(pid, "config", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spawn_exit_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_with_context_and_ctx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_module, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_module, setup, teardown),
        cmocka_unit_test_setup_teardown(test_funcs_module, setup, teardown),
        cmocka_unit_test_setup_teardown(test_imports_per_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_spawn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_instance_memory_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_instance_memory_counts_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_task_error_ends_the_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_task_budget_and_terminate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
