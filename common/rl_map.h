/* A string-keyed hash map (open addressing, linear probing) of borrowed values. */
#ifndef RL_MAP_H
#define RL_MAP_H

#include <stddef.h>

typedef struct rl_map_slot {
    char *key; /* owned copy (or borrowed); NULL = empty; RL_MAP_TOMB = deleted */
    void *val;
} rl_map_slot;

typedef struct rl_map {
    rl_map_slot *slots;
    size_t cap;  /* power of two or 0 */
    size_t len;  /* live entries */
    size_t used; /* live + tombstones */
    int borrow;  /* keys are the caller's (rl_map_init_borrowed) */
} rl_map;

void rl_map_init(rl_map *m);
/* A map whose keys are not copied: each key must stay valid and unchanged while it is in the
   map (e.g. a field of the value it maps to). */
void rl_map_init_borrowed(rl_map *m);
/* Frees the table and the key copies; values are the caller's. */
void rl_map_close(rl_map *m);
void *rl_map_get(const rl_map *m, const char *key);
/* Inserts or replaces; returns 0 or -ENOMEM. */
int rl_map_set(rl_map *m, const char *key, void *val);
/* Removes and returns the value (NULL when absent). */
void *rl_map_del(rl_map *m, const char *key);

/* Iteration: for (size_t i = 0; rl_map_next(m, &i, &k, &v);) ... ; deleting the current key is safe. */
int rl_map_next(const rl_map *m, size_t *iter, const char **key, void **val);

#endif
