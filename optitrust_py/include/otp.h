/* otp contract clauses for real builds.

   otp reads function and loop contracts written as calls at the top of a
   body, e.g.  __reads("q ~> Matrix3(H, S, D)");  When the code is compiled
   (gcc -I <otp package>/include), every clause expands to nothing, so the
   statement becomes the empty statement `;` and costs nothing. */
#ifndef OTP_H
#define OTP_H

#define __requires(s)
#define __ensures(s)
#define __reads(s)
#define __writes(s)
#define __modifies(s)
#define __xreads(s)
#define __xwrites(s)
#define __xmodifies(s)
#define __sreads(s)
#define __smodifies(s)

#endif /* OTP_H */
