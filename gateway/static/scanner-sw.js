/* Service worker of the door scanner page: the page and its two assets load without a network.
 * Network first (a new version of the page is used as soon as it is reachable), the stored copy
 * when the network fails. The scanning API is never cached: it passes through untouched. */
'use strict';

const CACHE = 'flashgate-scanner-v1';
const PAGE = ['/scan', '/scan/static/scanner.js', '/scan/static/scanner.css'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(PAGE)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n.startsWith('flashgate-scanner-') && n !== CACHE)
      .map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || !PAGE.includes(url.pathname)) return;
  event.respondWith(fetch(event.request).then((resp) => {
    if (resp.ok) {
      const copy = resp.clone();
      caches.open(CACHE).then((cache) => cache.put(url.pathname, copy));
    }
    return resp;
  }).catch(() => caches.match(url.pathname).then((hit) => hit || Response.error())));
});
