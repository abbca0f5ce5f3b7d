"use strict";
// The login form, sent as JSON so a wrong token is said on the page.
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.hidden = true;
  let answer;
  try {
    const response = await fetch("/console/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: document.getElementById("token").value }),
    });
    answer = await response.json();
    if (response.ok) {
      window.location.replace("/console/");
      return;
    }
  } catch (e) {
    answer = { error: "The gateway does not answer" };
  }
  error.textContent = answer.error || "Login refused";
  error.hidden = false;
});
