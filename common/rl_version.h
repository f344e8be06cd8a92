/* The release version, reported by --version, logs and the node registry. */
#ifndef RL_VERSION_H
#define RL_VERSION_H
#define RL_VERSION "0.1.0"
#endif
