/* The development console served at "/" when config console is on, and the JavaScript client it
 * is built on, served at "/relay.js". Their sources are edge/console.html and clients/js/relay.js;
 * the build embeds them (edge/embed.sh) as rl_console_html and rl_console_js. The gateway replaces
 * @WS_PATH@ in the page with the configured WebSocket path (as the body of a JavaScript string)
 * before serving it. Only the gateway includes this file. */
#ifndef RL_CONSOLE_H
#define RL_CONSOLE_H

#define RL_CONSOLE_PATH_MARK "@WS_PATH@"

#include "rl_console_assets.h"

#endif
