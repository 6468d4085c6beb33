// The compare page's clip player: the two clips of a trajectory pair in lock-step.
//
// Design. One clock owns the position: `clock.t`, in seconds of clip time, advanced on every
// animation frame by (performance.now() elapsed) x speed while playing. Neither video is the
// master; each is a follower that is steered towards the clock:
//   - a follower off by more than HARD_SYNC_S (a start, a stall, a loop wrap) is seeked to the
//     clock's time;
//   - a smaller error is taken out by nudging that video's playbackRate by up to NUDGE_MAX
//     (proportional to the error), so it converges without the stutter of a seek.
// Paused, stepped and scrubbed positions are set by seeking both videos to the same time, so
// then they agree exactly. Video clocks run from the media pipeline, not from the page, which
// is why a follower drifts at all; docs/benchmarks.md has the drift measured over a minute.
//
// Clips of different lengths: the clock runs to the longer clip; the shorter one is paused on
// its last frame until the clock wraps (loop on) or stops at the end (loop off). The page says
// so once both lengths are known.
//
// Frame steps use the finer of the two clips' frame rates (`data-fps`, the item's clip_fps,
// 30 when unknown), so every frame of either clip can be reached.
//
// A clip that fails (an error event, or no metadata within METADATA_TIMEOUT_MS) shows its
// message and the "clip broken" skip in its box instead of a blank video.
//
// Once both clips can play through, the hidden preload videos (the pair that will probably
// come next) start downloading, so they come from the browser's cache after the swap.
//
// htmx swaps the pair partial: after every swap the controller of the old pair is stopped and
// one is bound to the new markup. Keys are listened for on the document, so they work
// whatever has the focus, except in text fields.
(function () {
  "use strict";

  const SPEEDS = [0.25, 0.5, 1, 1.5, 2];
  const HARD_SYNC_S = 0.12;
  const NUDGE_GAIN = 2; // playbackRate change per second of error
  const NUDGE_MAX = 0.08;
  const METADATA_TIMEOUT_MS = 15000;
  const HAVE_METADATA = 1;
  const HAVE_ENOUGH_DATA = 4;

  function Player(root) {
    this.root = root;
    this.bar = root.querySelector(".player");
    this.videos = Array.from(root.querySelectorAll("video.clip"));
    this.t = 0;
    this.playing = false;
    this.speed = 1;
    this.loop = true;
    this.lastTick = 0;
    this.raf = 0;
    this.scrubbing = false;
    this.timers = [];
    this.stopped = false;
    const fps = this.videos.map((v) => Number(v.dataset.fps) || 30);
    this.fps = fps.length ? Math.max(...fps) : 30;
    if (this.bar && this.videos.length === 2) this.bind();
    this.videos.forEach((v) => this.watchForFailure(v));
  }

  Player.prototype.watchForFailure = function (video) {
    const fail = () => this.broken(video);
    video.addEventListener("error", fail);
    // The error may have happened before this script ran.
    if (video.error || video.networkState === HTMLMediaElement.NETWORK_NO_SOURCE) fail();
    this.timers.push(setTimeout(() => {
      if (video.readyState < HAVE_METADATA) fail();
    }, METADATA_TIMEOUT_MS));
  };

  Player.prototype.broken = function (video) {
    const box = video.closest(".clip-box");
    if (!box || box.classList.contains("is-broken")) return;
    box.classList.add("is-broken");
    video.hidden = true;
    const message = box.querySelector(".clip-broken");
    if (message) message.hidden = false;
    if (window.htmx) window.htmx.process(box);
    if (this.toggleButton) this.pause();
    this.maybePreloadNext();
  };

  Player.prototype.bind = function () {
    const bar = this.bar;
    this.toggleButton = bar.querySelector("[data-act=toggle]");
    this.scrub = bar.querySelector(".scrub");
    this.timeOut = bar.querySelector(".time");
    this.speedSelect = bar.querySelector(".speed");
    this.loopBox = bar.querySelector(".loop");
    for (const v of this.videos) {
      v.controls = false;
      v.loop = false; // the clock loops; a follower that loops by itself would run ahead
      v.muted = true;
      v.preload = "auto"; // scrubbing and stepping want the whole clip at hand
      v.addEventListener("loadedmetadata", () => this.onMetadata());
      v.addEventListener("canplaythrough", () => this.maybePreloadNext());
    }
    bar.hidden = false;
    const keys = this.root.querySelector(".player-keys");
    if (keys) keys.hidden = false;
    bar.querySelector("[data-act=back]").addEventListener("click", () => this.step(-1));
    bar.querySelector("[data-act=forward]").addEventListener("click", () => this.step(1));
    this.toggleButton.addEventListener("click", () => this.toggle());
    this.scrub.addEventListener("input", () => {
      this.scrubbing = true;
      this.seek(Number(this.scrub.value));
    });
    this.scrub.addEventListener("change", () => { this.scrubbing = false; });
    this.speedSelect.addEventListener("change", () => this.setSpeed(Number(this.speedSelect.value)));
    this.loopBox.addEventListener("change", () => { this.loop = this.loopBox.checked; });
    this.onMetadata();
    this.maybePreloadNext();
  };

  Player.prototype.durations = function () {
    return this.videos.map((v) => (Number.isFinite(v.duration) ? v.duration : 0));
  };

  Player.prototype.duration = function () {
    return Math.max(0, ...this.durations());
  };

  Player.prototype.onMetadata = function () {
    const d = this.durations();
    this.scrub.max = String(this.duration());
    const note = this.root.querySelector(".player-note");
    if (note && d.every((x) => x > 0)) note.hidden = Math.abs(d[0] - d[1]) < 1 / this.fps;
    this.render();
  };

  // Where a follower should be at clock time t: the clock, or its own last frame if shorter.
  Player.prototype.target = function (video, t) {
    const d = Number.isFinite(video.duration) ? video.duration : 0;
    return Math.min(t, Math.max(0, d - 0.001));
  };

  Player.prototype.seekVideos = function () {
    for (const v of this.videos) {
      if (v.readyState < HAVE_METADATA) continue;
      v.currentTime = this.target(v, this.t);
    }
  };

  Player.prototype.seek = function (t) {
    const d = this.duration();
    this.t = Math.min(Math.max(0, t), d || 0);
    this.seekVideos();
    this.lastTick = performance.now();
    this.render();
  };

  Player.prototype.play = function () {
    if (this.playing || this.stopped) return;
    if (this.t >= this.duration()) this.t = 0;
    this.playing = true;
    this.seekVideos();
    for (const v of this.videos) {
      v.playbackRate = this.speed;
      if (v.currentTime < v.duration - 0.002) v.play().catch(() => {});
    }
    this.lastTick = performance.now();
    this.raf = requestAnimationFrame((now) => this.tick(now));
    this.render();
  };

  Player.prototype.pause = function () {
    this.playing = false;
    cancelAnimationFrame(this.raf);
    for (const v of this.videos) v.pause();
    this.seekVideos();
    this.render();
  };

  Player.prototype.toggle = function () {
    if (this.playing) this.pause(); else this.play();
  };

  Player.prototype.step = function (frames) {
    if (this.playing) this.pause();
    // Land just inside the frame, so float rounding never shows the one before.
    const frame = Math.round(this.t * this.fps) + frames;
    const last = Math.max(0, Math.ceil(this.duration() * this.fps) - 1);
    this.seek((Math.min(Math.max(frame, 0), last) + 0.01) / this.fps);
  };

  Player.prototype.setSpeed = function (speed) {
    this.speed = speed;
    this.speedSelect.value = String(speed);
    for (const v of this.videos) v.playbackRate = speed;
    this.render();
  };

  Player.prototype.changeSpeed = function (direction) {
    const i = SPEEDS.indexOf(this.speed);
    const next = SPEEDS[Math.min(SPEEDS.length - 1, Math.max(0, (i < 0 ? 2 : i) + direction))];
    this.setSpeed(next);
  };

  Player.prototype.toggleLoop = function () {
    this.loop = !this.loop;
    this.loopBox.checked = this.loop;
  };

  Player.prototype.tick = function (now) {
    if (!this.playing) return;
    const d = this.duration();
    const elapsed = ((now - this.lastTick) / 1000) * this.speed;
    this.lastTick = now;
    if (this.videos.some((v) => this.waiting(v))) {
      // A clip is seeking or out of data: the clock waits for it, and the other clip waits
      // too (paused), or it would run ahead and be seeked back in turn.
      for (const v of this.videos) if (!v.paused) v.pause();
      this.render();
      this.raf = requestAnimationFrame((n) => this.tick(n));
      return;
    }
    this.t += elapsed;
    if (d > 0 && this.t >= d) {
      if (!this.loop) {
        this.t = d;
        this.pause();
        return;
      }
      this.t %= d;
      this.seekVideos();
    }
    for (const v of this.videos) this.follow(v);
    this.render();
    this.raf = requestAnimationFrame((n) => this.tick(n));
  };

  const HAVE_FUTURE_DATA = 3;
  Player.prototype.waiting = function (v) {
    if (v.readyState < HAVE_METADATA) return true;
    if (this.target(v, this.t) < this.t) return false; // holding its last frame
    return v.seeking || v.readyState < HAVE_FUTURE_DATA;
  };

  Player.prototype.follow = function (v) {
    if (v.readyState < HAVE_METADATA) return;
    const target = this.target(v, this.t);
    const atEnd = target < this.t; // a shorter clip past its end holds its last frame
    if (atEnd) {
      if (!v.paused) v.pause();
      if (Math.abs(v.currentTime - target) > 0.05) v.currentTime = target;
      return;
    }
    if (v.paused) v.play().catch(() => {});
    const error = target - v.currentTime; // > 0: the video is behind
    if (Math.abs(error) > HARD_SYNC_S * Math.max(1, this.speed)) {
      if (!v.seeking) v.currentTime = target;
      if (v.playbackRate !== this.speed) v.playbackRate = this.speed;
      return;
    }
    const nudge = Math.max(-NUDGE_MAX, Math.min(NUDGE_MAX, error * NUDGE_GAIN));
    // Set only a changed rate (in steps of 1%): every assignment costs the media pipeline.
    const rate = Math.round(this.speed * (1 + nudge) * 100) / 100;
    if (Math.abs(v.playbackRate - rate) > 0.005) v.playbackRate = rate;
  };

  Player.prototype.render = function () {
    if (!this.toggleButton) return;
    const d = this.duration();
    if (!this.scrubbing) this.scrub.value = String(this.t);
    this.timeOut.textContent = `${this.t.toFixed(2)} / ${d.toFixed(2)} s · ${this.speed}×`;
    this.toggleButton.textContent = this.playing ? "Pause" : "Play";
    this.toggleButton.setAttribute("aria-pressed", this.playing ? "true" : "false");
  };

  Player.prototype.maybePreloadNext = function () {
    const settled = (v) => v.readyState >= HAVE_ENOUGH_DATA || v.closest(".is-broken");
    if (!this.videos.every(settled)) return;
    for (const v of this.root.querySelectorAll("video.preload-clip")) {
      if (v.preload !== "auto") { v.preload = "auto"; v.load(); }
    }
  };

  Player.prototype.stop = function () {
    this.stopped = true;
    this.playing = false;
    cancelAnimationFrame(this.raf);
    this.timers.forEach(clearTimeout);
  };

  let current = null;
  const bindPage = () => {
    const root = document.getElementById("compare");
    if (current && current.root === root) return;
    if (current) current.stop();
    current = root ? new Player(root) : null;
  };

  // Shortcuts; compare.js owns 1-4 (the choices).
  const KEYS = {
    " ": (p) => p.toggle(),
    ",": (p) => p.step(-1),
    ".": (p) => p.step(1),
    "[": (p) => p.changeSpeed(-1),
    "]": (p) => p.changeSpeed(1),
    l: (p) => p.toggleLoop(),
    L: (p) => p.toggleLoop(),
  };
  const TEXT_ENTRY = "input:not([type=checkbox]):not([type=radio]):not([type=range])"
    + ":not([type=button]):not([type=submit]), textarea, select, [contenteditable]";
  const typing = (event) => event.target instanceof Element && (event.target.matches(TEXT_ENTRY)
    // Space ticks a focused checkbox or radio button (the loop box, a criterion's answer).
    || (event.key === " " && event.target.matches("input[type=checkbox], input[type=radio]")));
  const handled = (event) => current && current.bar && !current.bar.hidden
    && !event.metaKey && !event.ctrlKey && !event.altKey && !typing(event)
    && Object.prototype.hasOwnProperty.call(KEYS, event.key);
  document.addEventListener("keydown", (event) => {
    if (!handled(event)) return;
    // Also keeps Space from clicking a focused button (a choice!) or scrolling the page.
    event.preventDefault();
    if (event.repeat && event.key === " ") return;
    KEYS[event.key](current);
  });
  document.addEventListener("keyup", (event) => {
    if (event.key === " " && handled(event)) event.preventDefault();
  });

  document.addEventListener("htmx:afterSwap", () => {
    bindPage();
    // The swap removed the focused element (a choice button): keep the focus on the new
    // pair's controls instead of letting it fall to <body>.
    const lost = !document.activeElement || document.activeElement === document.body;
    if (lost && current && current.toggleButton) current.toggleButton.focus({ preventScroll: true });
  });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", bindPage);
  else bindPage();
})();
